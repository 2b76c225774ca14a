"""hf_models.py -- Small models of real Hugging Face transformers families,
built the same way (same config, same seed) by the tests and their helper
processes.  Nothing is downloaded: every model comes from a config written
here, with random weights.

    gpt2    GPT2LMHeadModel: lm_head.weight tied to transformer.wte.weight
    llama   LlamaForCausalLM: no biases, rotary inv_freq buffers that are
            not persistent (not in the state_dict)
    bert    BertForMaskedLM: position_ids / token_type_ids buffers (not
            persistent in transformers 5), the decoder's weight and bias
            tied to the word embeddings and cls.predictions.bias
    t5      T5ForConditionalGeneration: shared.weight used by the encoder,
            the decoder and the head (four keys, one tensor)
    vit     ViTForImageClassification
    resnet  ResNetForImageClassification (batch norm buffers, an int64
            num_batches_tracked among them)
"""
import os

# The tests never reach the network, and transformers stays quiet.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

INPUT_SEED = 4321
VOCAB = 96
KINDS = ("gpt2", "llama", "bert", "t5", "vit", "resnet")


def config(kind):
    """The small config of kind."""
    import transformers as tf
    if kind == "gpt2":
        return tf.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64,
                             vocab_size=VOCAB, bos_token_id=0, eos_token_id=0)
    if kind == "llama":
        return tf.LlamaConfig(hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, vocab_size=VOCAB,
                              max_position_embeddings=64, bos_token_id=0,
                              eos_token_id=0, pad_token_id=0)
    if kind == "bert":
        return tf.BertConfig(hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=2, intermediate_size=64,
                             vocab_size=VOCAB, max_position_embeddings=64,
                             pad_token_id=0)
    if kind == "t5":
        return tf.T5Config(d_model=32, d_ff=64, d_kv=16, num_layers=2,
                           num_heads=2, vocab_size=VOCAB, pad_token_id=0,
                           eos_token_id=1, decoder_start_token_id=0)
    if kind == "vit":
        return tf.ViTConfig(hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=64,
                            image_size=32, patch_size=8, num_labels=5)
    if kind == "resnet":
        return tf.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32],
                               depths=[1, 1], num_labels=5)
    raise ValueError(kind)


def model_class(kind):
    import transformers as tf
    return {"gpt2": tf.GPT2LMHeadModel, "llama": tf.LlamaForCausalLM,
            "bert": tf.BertForMaskedLM, "t5": tf.T5ForConditionalGeneration,
            "vit": tf.ViTForImageClassification,
            "resnet": tf.ResNetForImageClassification}[kind]


def build(kind, seed):
    """The model kind with weights from seed, in eval mode.  The resnet's
    batch norms get non-trivial running statistics first."""
    torch.manual_seed(seed)
    m = model_class(kind)(config(kind))
    if kind == "resnet":
        m.train()
        with torch.no_grad():
            m(pixel_values=torch.randn(4, 3, 32, 32))
    return m.eval()


def fixed_input(kind):
    """The keyword arguments every test feeds a model of kind."""
    g = torch.Generator().manual_seed(INPUT_SEED)
    if kind in ("vit", "resnet"):
        return {"pixel_values": torch.randn(2, 3, 32, 32, generator=g)}
    ids = torch.randint(2, VOCAB, (2, 12), generator=g)
    if kind == "t5":
        return {"input_ids": ids,
                "decoder_input_ids": torch.randint(2, VOCAB, (2, 5),
                                                   generator=g)}
    if kind == "bert":
        mask = torch.ones_like(ids)
        mask[1, 9:] = 0
        return {"input_ids": ids, "attention_mask": mask}
    return {"input_ids": ids}


def forward(model, kind):
    """model's logits on the fixed input."""
    with torch.no_grad():
        return model(**fixed_input(kind)).logits


def tie_groups(model):
    """Lists of state_dict keys that share one tensor (at least two)."""
    groups = {}
    for k, v in model.state_dict(keep_vars=True).items():
        if v.numel():
            groups.setdefault(id(v), []).append(k)
    return sorted(g for g in groups.values() if len(g) > 1)
