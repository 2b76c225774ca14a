"""hf_publish.py -- Builds a Hugging Face test model in its own process and
publishes it, or saves it the way transformers does.

    hf_publish.py KIND NAME SEED OUTDIR [MODE]

Builds hf_models.build(KIND, SEED) and saves into OUTDIR the state_dict of
what it hands on (source.pt) and the model's logits on the fixed input
(output.pt).  MODE says what it hands on:

    publish       (default) the model, to the daemon at $WBROKER_SOCKET
    compile       torch.compile(model): keys under "_orig_mod."
    ddp           DistributedDataParallel(model) on a one-process gloo
                  group: keys under "module."
    legacy        the state_dict plus the buffers it leaves out (BERT's
                  position_ids, Llama's inv_freq), as checkpoints of older
                  transformers releases hold them
    save          model.save_pretrained(OUTDIR/hf, safe_serialization=True)
    shard:SIZE    save, and also save_pretrained(OUTDIR/sharded,
                  max_shard_size=SIZE)

Prints the version published (0 when nothing was)."""
import os
import sys

import hf_models  # sets the offline environment before transformers loads
import torch

import wbroker


def ddp_wrap(model, outdir):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method="file://" + os.path.join(
        outdir, "ddp.rendezvous"), rank=0, world_size=1)
    return torch.nn.parallel.DistributedDataParallel(model)


def main():
    kind, name, seed, outdir = sys.argv[1:5]
    mode = sys.argv[5] if len(sys.argv) > 5 else "publish"
    model = hf_models.build(kind, int(seed))
    torch.save(hf_models.forward(model, kind),
               os.path.join(outdir, "output.pt"))
    handed = model
    if mode == "compile":
        handed = torch.compile(model)   # compiles lazily: never called here
    elif mode == "ddp":
        handed = ddp_wrap(model, outdir)
    sd = handed.state_dict()
    if mode == "legacy":
        sd.update((k, b) for k, b in model.named_buffers() if k not in sd)
        handed = sd
    torch.save(sd, os.path.join(outdir, "source.pt"))
    version = 0
    if mode in ("publish", "compile", "ddp", "legacy"):
        with wbroker.connect() as c:
            version = c.publish(name, handed, metadata={"kind": kind})
    else:
        model.save_pretrained(os.path.join(outdir, "hf"),
                              safe_serialization=True)
        if mode.startswith("shard:"):
            model.save_pretrained(os.path.join(outdir, "sharded"),
                                  safe_serialization=True,
                                  max_shard_size=mode.split(":", 1)[1])
    if mode == "ddp":
        torch.distributed.destroy_process_group()
    print(version)


if __name__ == "__main__":
    main()
