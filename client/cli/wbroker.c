/* wbroker.c -- The wbroker command-line tool: inspects and drives wbrokerd.
 *
 *   wbroker [--socket PATH] [--json] COMMAND ...
 *
 * This file parses the command line and runs the commands that only talk
 * to the daemon (status, ls, info, plan, rm, watch); import and export live
 * in transfer.c, pin, unpin and holders in lifecycle.c.  Every command opens
 * one connection through libwbroker. Exit status: 0 on success, 1 when the
 * daemon or the system reported an error, 2 on bad usage. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../safetensors.h"
#include "cli.h"

/* Runs one command with its parsed arguments; returns the exit status. */
typedef int (*command_fn)(wb_cli *cli, const wb_cli_args *a);

/* One command: its name, its runner and what arguments it takes. */
typedef struct command {
    const char *name; /* Word on the command line. */
    command_fn run;   /* Runs it. */
    int min_pos;      /* Fewest positionals. */
    int max_pos;      /* Most positionals. */
    int plan_opts;    /* 1 if it takes plan's options. */
    const char *args; /* Argument synopsis. */
    const char *help; /* One-line description. */
} command;

static const char usage_head[] =
    "usage: wbroker [--socket PATH] [--json] COMMAND ...\n";

static const char usage_options[] =
    "\noptions:\n"
    "  --socket PATH   daemon socket (default: $WBROKER_SOCKET, else\n"
    "                  /run/wbroker/wbroker.sock for root, else\n"
    "                  $XDG_RUNTIME_DIR/wbroker.sock, else\n"
    "                  /tmp/wbroker-$UID/wbroker.sock)\n"
    "  --json          print one JSON document on stdout\n"
    "  --help          print this help\n"
    "  --version       print the version\n"
    "\nexit status: 0 success, 1 error reported by the daemon or the "
    "system,\n2 bad usage.\n";

/* ---------------------------------------------------------------- helpers */

int cli_usage_error(const char *fmt, ...) {
    va_list ap;
    fflush(stdout);
    fputs("wbroker: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\nTry 'wbroker --help' for more information.\n", stderr);
    return WB_CLI_USAGE;
}

int cli_connect(wb_cli *cli) {
    int rc = wb_connect(cli->socket, &cli->c);
    if (rc == 0)
        return WB_CLI_OK;
    if (cli->c == NULL) {
        char path[WB_CLI_PATH_BUF];
        if (wb_socket_path(cli->socket, path, sizeof(path)) < 0)
            snprintf(path, sizeof(path), "%s", cli->socket ? cli->socket : "");
        return cli_fail(cli, rc, "%s", path);
    }
    rc = cli_fail_client(cli, rc);
    wb_close(cli->c);
    cli->c = NULL;
    return rc;
}

int cli_parse_ref(const char *ref, char *model, size_t modellen,
                  uint64_t *version) {
    const char *at = strrchr(ref, '@');
    size_t n = strlen(ref);
    *version = 0;
    if (at != NULL &&
        (at[1] == '\0' || strspn(at + 1, "0123456789") == strlen(at + 1))) {
        const char *d = at + 1;
        if (*d == '\0') {
            cli_usage_error("'%s': missing version after '@'", ref);
            return -1;
        }
        errno = 0;
        char *end;
        unsigned long long v = strtoull(d, &end, 10);
        if (errno || v == 0) {
            cli_usage_error("'%s': versions are numbered from 1", ref);
            return -1;
        }
        *version = v;
        n = (size_t)(at - ref);
    }
    if (n == 0) {
        cli_usage_error("'%s': missing model name", ref);
        return -1;
    }
    if (n >= modellen) {
        cli_usage_error("model name longer than %d bytes", WB_MAX_NAME);
        return -1;
    }
    memcpy(model, ref, n);
    model[n] = '\0';
    return 0;
}

/* Formats "model" or "model@version" (version 0: the latest) into buf. */
static const char *ref_str(const char *model, uint64_t version, char *buf,
                           size_t len) {
    if (version)
        snprintf(buf, len, "%s@%" PRIu64, model, version);
    else
        snprintf(buf, len, "%s", model);
    return buf;
}

/* Renders a u64 as decimal into buf. */
static const char *u64_str(uint64_t v, char *buf, size_t len) {
    snprintf(buf, len, "%" PRIu64, v);
    return buf;
}

/* ---------------------------------------------------------------- status */

/* `status`: the daemon's version, uptime, memory and counts. */
static int cmd_status(wb_cli *cli, const wb_cli_args *a) {
    wb_status st;
    if (cli_connect(cli))
        return WB_CLI_FAIL;
    int rc = wb_get_status(cli->c, &st);
    if (rc)
        return cli_fail_client(cli, rc);
    char path[WB_CLI_PATH_BUF];
    if (wb_socket_path(cli->socket, path, sizeof(path)) < 0)
        path[0] = '\0';
    if (cli->json) {
        wb_counter *cv = NULL;
        size_t nc = 0;
        rc = wb_get_counters(cli->c, &cv, &nc);
        if (rc)
            return cli_fail_client(cli, rc);
        json_t *counters = json_object();
        for (size_t i = 0; counters && i < nc; i++)
            json_object_set_new(counters, cv[i].name,
                                json_integer((json_int_t)cv[i].value));
        wb_counters_free(cv, nc);
        return cli_json_print(json_pack(
            "{s:s, s:s, s:s, s:I, s:f, s:I, s:I, s:I, s:I, s:I, s:I, s:o}",
            "version", st.version, "client_version", wb_version_string(),
            "socket", path, "pid", (json_int_t)st.pid, "uptime", st.uptime,
            "memory_used", (json_int_t)st.memory_used, "memory_limit",
            (json_int_t)st.memory_limit, "shmem", (json_int_t)st.memory_shmem,
            "models", (json_int_t)st.models, "versions",
            (json_int_t)st.versions, "clients", (json_int_t)st.clients,
            "counters", counters));
    }
    char up[WB_CLI_SIZE_BUF], used[WB_CLI_SIZE_BUF], lim[WB_CLI_SIZE_BUF],
        shm[WB_CLI_SIZE_BUF];
    cli_duration(st.uptime, up, sizeof(up));
    cli_size(st.memory_used, used, sizeof(used));
    printf("daemon    wbrokerd %s (pid %" PRIu32 ")\n", st.version, st.pid);
    printf("socket    %s\n", path);
    printf("uptime    %s\n", up);
    if (st.memory_limit)
        printf("memory    %s used of %s (%.0f%%)\n", used,
               cli_size(st.memory_limit, lim, sizeof(lim)),
               100.0 * (double)st.memory_used / (double)st.memory_limit);
    else
        printf("memory    %s used, no limit\n", used);
    printf("shmem     %s allocated by the kernel\n",
           cli_size(st.memory_shmem, shm, sizeof(shm)));
    printf("models    %" PRIu64 "\n", st.models);
    printf("versions  %" PRIu64 "\n", st.versions);
    printf("clients   %" PRIu64 "\n", st.clients);
    /* Holds and what retired versions still charge, from the counters (a
     * daemon older than holds reports neither). */
    wb_counter *cv = NULL;
    size_t nc = 0;
    uint64_t holds = 0, retired = 0, b2m = 0, b4k = 0;
    uint64_t pb = 0, pbb = 0, pw = 0, pf = 0, pc = 0;
    int have = 0, persist = 0;
    const char *mode = NULL;
    if (wb_get_counters(cli->c, &cv, &nc) == 0)
        for (size_t i = 0; i < nc; i++) {
            if (strncmp(cv[i].name, "pages.", 6) == 0 && cv[i].value)
                mode = cv[i].name + 6;
            else if (strcmp(cv[i].name, "bytes.2m") == 0)
                b2m = cv[i].value;
            else if (strcmp(cv[i].name, "bytes.4k") == 0)
                b4k = cv[i].value;
            else if (strcmp(cv[i].name, "holds") == 0)
                holds = cv[i].value, have = 1;
            else if (strcmp(cv[i].name, "bytes.retired") == 0)
                retired = cv[i].value;
            else if (strncmp(cv[i].name, "persist.", 8) == 0) {
                const char *k = cv[i].name + 8;
                uint64_t x = cv[i].value;
                persist = 1;
                if (strcmp(k, "backlog") == 0)
                    pb = x;
                else if (strcmp(k, "backlog_bytes") == 0)
                    pbb = x;
                else if (strcmp(k, "written") == 0)
                    pw = x;
                else if (strcmp(k, "failed") == 0)
                    pf = x;
                else if (strcmp(k, "corrupt") == 0)
                    pc = x;
            }
        }
    if (mode) {
        char big[WB_CLI_SIZE_BUF];
        printf("pages     --huge-pages %s: %s in 2 MiB pages, %s in 4 KiB\n",
               mode, cli_size(b2m, big, sizeof(big)),
               cli_size(b4k, shm, sizeof(shm)));
    }
    wb_counters_free(cv, nc);
    if (have)
        printf("holds     %" PRIu64 " mappings held (%s of them in retired "
               "or dropped versions)\n",
               holds, cli_size(retired, shm, sizeof(shm)));
    if (persist)
        printf("persist   %" PRIu64 " versions (%s) to write, %" PRIu64
               " written, %" PRIu64 " failed, %" PRIu64
               " files set aside at start\n",
               pb, cli_size(pbb, shm, sizeof(shm)), pw, pf, pc);
    return WB_CLI_OK;
}

/* ---------------------------------------------------------------- ls */

/* The owner of a model for people: its user name, else the uid ("-" when
 * the daemon does not say). */
static const char *owner_str(uint32_t uid, char *buf, size_t n) {
    struct passwd *pw = uid == WB_NO_OWNER ? NULL : getpwuid((uid_t)uid);
    if (pw)
        snprintf(buf, n, "%s", pw->pw_name);
    else if (uid == WB_NO_OWNER)
        snprintf(buf, n, "-");
    else
        snprintf(buf, n, "%u", (unsigned)uid);
    return buf;
}

/* The owner of a model for JSON: its uid, or null when unknown. */
static json_t *owner_json(uint32_t uid) {
    return uid == WB_NO_OWNER ? json_null() : json_integer((json_int_t)uid);
}

/* `ls`: one line per model: versions listed and how many are pinned;
 * readers are the processes holding any of its versions. */
static int cmd_ls(wb_cli *cli, const wb_cli_args *a) {
    wb_model_info *v = NULL;
    size_t n = 0;
    if (cli_connect(cli))
        return WB_CLI_FAIL;
    int rc = wb_list(cli->c, &v, &n);
    if (rc)
        return cli_fail_client(cli, rc);
    if (cli->json) {
        json_t *arr = json_array();
        for (size_t i = 0; arr && i < n; i++)
            json_array_append_new(
                arr,
                json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:o}", "name",
                          v[i].name, "latest", (json_int_t)v[i].latest,
                          "versions", (json_int_t)v[i].nversions, "pinned",
                          (json_int_t)v[i].pinned, "tensors",
                          (json_int_t)v[i].tensors, "bytes",
                          (json_int_t)v[i].bytes, "readers",
                          (json_int_t)v[i].readers, "owner",
                          owner_json(v[i].owner)));
        wb_model_info_free(v, n);
        return cli_json_print(arr);
    }
    static const char *const head[] = {"MODEL",    ">LATEST",  ">VERSIONS",
                                       ">PINNED",  ">TENSORS", ">SIZE",
                                       ">READERS", "OWNER",    NULL};
    wb_cli_table t;
    cli_table_init(&t, head);
    rc = WB_CLI_OK;
    for (size_t i = 0; i < n && rc == WB_CLI_OK; i++) {
        char b[5][WB_CLI_SIZE_BUF], size[WB_CLI_SIZE_BUF], own[64];
        const char *row[] = {v[i].name,
                             u64_str(v[i].latest, b[0], sizeof(b[0])),
                             u64_str(v[i].nversions, b[1], sizeof(b[1])),
                             u64_str(v[i].pinned, b[4], sizeof(b[4])),
                             u64_str(v[i].tensors, b[2], sizeof(b[2])),
                             cli_size(v[i].bytes, size, sizeof(size)),
                             u64_str(v[i].readers, b[3], sizeof(b[3])),
                             owner_str(v[i].owner, own, sizeof(own))};
        if (cli_table_add(&t, row))
            rc = cli_fail(cli, WB_ENOMEM, "building the table");
    }
    if (rc == WB_CLI_OK)
        cli_table_print(&t);
    cli_table_free(&t);
    wb_model_info_free(v, n);
    return rc;
}

/* ---------------------------------------------------------------- info */

/* Prints the tensor table and metadata of m for people. */
static int print_info(wb_cli *cli, const char *model, const wb_mapping *m,
                      uint32_t owner, const char *digest) {
    size_t n = wb_map_count(m);
    uint64_t total = 0;
    wb_tensor t;
    for (size_t i = 0; i < n; i++)
        if (wb_map_tensor(m, i, &t) == 0)
            total += t.nbytes;
    char size[WB_CLI_SIZE_BUF];
    printf("model     %s\n", model);
    printf("version   %" PRIu64 "\n", wb_map_version(m));
    char own[64];
    printf("owner     %s\n", owner_str(owner, own, sizeof(own)));
    printf("tensors   %zu\n", n);
    if (digest[0])
        printf("digest    %s (XXH3-128 of the image)\n", digest);
    printf("size      %s (%" PRIu64 " bytes)\n",
           cli_size(total, size, sizeof(size)), total);
    uint64_t huge = 0;
    const char *pages = wb_map_pages(m, &huge);
    if (pages[0])
        printf("pages     %s, %s in 2 MiB pages\n", pages,
               cli_size(huge, size, sizeof(size)));
    size_t nm = wb_map_meta_count(m);
    if (nm) {
        printf("metadata\n");
        for (size_t i = 0; i < nm; i++) {
            const char *k, *v;
            if (wb_map_meta_at(m, i, &k, &v) == 0)
                printf("  %s: %s\n", k, v);
        }
    }
    putchar('\n');
    static const char *const head[] = {"TENSOR", "DTYPE", "SHAPE", ">SIZE",
                                       NULL};
    wb_cli_table tab;
    cli_table_init(&tab, head);
    int rc = WB_CLI_OK;
    for (size_t i = 0; i < n && rc == WB_CLI_OK; i++) {
        if (wb_map_tensor(m, i, &t))
            continue;
        char shape[WB_CLI_SHAPE_BUF];
        const char *dt = wb_dtype_name(t.dtype);
        const char *row[] = {t.name, dt ? dt : "?",
                             cli_shape(t.ndim, t.shape, shape, sizeof(shape)),
                             cli_size(t.nbytes, size, sizeof(size))};
        if (cli_table_add(&tab, row))
            rc = cli_fail(cli, WB_ENOMEM, "building the table");
    }
    if (rc == WB_CLI_OK)
        cli_table_print(&tab);
    cli_table_free(&tab);
    return rc;
}

/* Builds the JSON document of `info`. */
static json_t *info_json(const char *model, const wb_mapping *m, uint32_t owner,
                         const char *digest) {
    json_t *tensors = json_array(), *meta = json_object();
    uint64_t total = 0;
    size_t n = wb_map_count(m);
    for (size_t i = 0; tensors && i < n; i++) {
        wb_tensor t;
        if (wb_map_tensor(m, i, &t))
            continue;
        total += t.nbytes;
        const char *dt = wb_dtype_name(t.dtype);
        json_array_append_new(tensors,
                              json_pack("{s:s, s:s, s:o, s:I}", "name", t.name,
                                        "dtype", dt ? dt : "?", "shape",
                                        cli_json_shape(t.ndim, t.shape),
                                        "bytes", (json_int_t)t.nbytes));
    }
    for (size_t i = 0; meta && i < wb_map_meta_count(m); i++) {
        const char *k, *v;
        if (wb_map_meta_at(m, i, &k, &v) == 0)
            json_object_set_new(meta, k, json_string(v));
    }
    uint64_t huge = 0;
    const char *pages = wb_map_pages(m, &huge);
    return json_pack("{s:s, s:I, s:o, s:I, s:s, s:I, s:o, s:o, s:o}", "model",
                     model, "version", (json_int_t)wb_map_version(m), "owner",
                     owner_json(owner), "bytes", (json_int_t)total, "pages",
                     pages, "bytes_2m", (json_int_t)huge, "tensors", tensors,
                     "metadata", meta, "digest",
                     digest[0] ? json_string(digest) : json_null());
}

/* `info MODEL[@VERSION]`: tensors and metadata, without mapping. */
static int cmd_info(wb_cli *cli, const wb_cli_args *a) {
    char model[WB_MAX_NAME + 1];
    uint64_t version;
    if (cli_parse_ref(a->pos[0], model, sizeof(model), &version))
        return WB_CLI_USAGE;
    if (cli_connect(cli))
        return WB_CLI_FAIL;
    wb_mapping *m = NULL;
    int rc = wb_load(cli->c, model, version, NULL, NULL, WB_MAP_PLAN, &m);
    if (rc) {
        wb_unmap(m);
        return cli_fail_client(cli, rc);
    }
    /* The owner comes with the list, not with the tensor table, and so
     * does the digest, of the latest version only. */
    uint32_t owner = WB_NO_OWNER;
    char digest[33] = "";
    wb_model_info *v = NULL;
    size_t n = 0;
    if (wb_list(cli->c, &v, &n) == 0)
        for (size_t i = 0; i < n; i++)
            if (strcmp(v[i].name, model) == 0) {
                owner = v[i].owner;
                if (v[i].latest == wb_map_version(m))
                    memcpy(digest, v[i].digest, sizeof(digest));
            }
    wb_model_info_free(v, n);
    rc = cli->json ? cli_json_print(info_json(model, m, owner, digest))
                   : print_info(cli, model, m, owner, digest);
    wb_unmap(m);
    return rc;
}

/* ---------------------------------------------------------------- plan */

/* Reads a whole small file (a rules file) into a NUL-terminated buffer in
 * *out.  Returns 0, or reports the failure and returns WB_CLI_FAIL. */
static int read_text_file(wb_cli *cli, const char *path, char **out) {
    *out = NULL;
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return cli_fail(cli, WB_ESYS, "%s: %s", path, strerror(errno));
    char *buf = malloc(WB_CLI_MAX_RULES_FILE + 1);
    if (buf == NULL) {
        fclose(f);
        return cli_fail(cli, WB_ENOMEM, "reading %s", path);
    }
    size_t n = fread(buf, 1, WB_CLI_MAX_RULES_FILE + 1, f);
    int err = ferror(f) ? errno : 0;
    fclose(f);
    if (err) {
        free(buf);
        return cli_fail(cli, WB_EIO, "%s: %s", path, strerror(err));
    }
    if (n > WB_CLI_MAX_RULES_FILE) {
        free(buf);
        return cli_fail(cli, WB_ETOOBIG, "%s: larger than %u bytes", path,
                        WB_CLI_MAX_RULES_FILE);
    }
    if (memchr(buf, '\0', n) != NULL) {
        free(buf);
        return cli_fail(cli, WB_ERULE, "%s: contains a NUL byte", path);
    }
    buf[n] = '\0';
    *out = buf;
    return 0;
}

/* Builds the target schema from a safetensors file's header; the target's
 * name is the file's base name and *count its tensor count.  Returns 0, or
 * reports the failure and returns WB_CLI_FAIL. */
static int load_target(wb_cli *cli, const char *path, wb_schema **out,
                       size_t *count) {
    *out = NULL;
    *count = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return cli_fail(cli, WB_ESYS, "%s: %s", path, strerror(errno));
    wb__st_file f;
    char err[WB_CLI_ERR_BUF] = "";
    int rc = wb__st_read_file_header(fd, &f, err, sizeof(err));
    close(fd);
    if (rc)
        return cli_fail(cli, rc, "%s: %s", path, err);
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    wb_schema *s = wb_schema_new(base);
    if (s == NULL) {
        wb__st_file_free(&f);
        return cli_fail(cli, WB_ENOMEM, "building the target schema");
    }
    for (size_t i = 0; i < f.n; i++) {
        rc = wb_schema_add(s, f.t[i].name, f.t[i].dtype, f.t[i].ndim,
                           f.t[i].shape);
        if (rc) {
            rc = cli_fail(cli, rc, "%s: tensor '%s'", path, f.t[i].name);
            wb__st_file_free(&f);
            wb_schema_free(s);
            return rc;
        }
    }
    *count = f.n;
    wb__st_file_free(&f);
    *out = s;
    return 0;
}

/* Builds the rules of a rules file.  Returns 0, or reports the failure and
 * returns WB_CLI_FAIL. */
static int load_rules(wb_cli *cli, const char *path, wb_rules **out) {
    char *text;
    *out = NULL;
    if (read_text_file(cli, path, &text))
        return WB_CLI_FAIL;
    wb_rules *r = wb_rules_new();
    if (r == NULL) {
        free(text);
        return cli_fail(cli, WB_ENOMEM, "building the rules");
    }
    char err[WB_CLI_ERR_BUF] = "";
    int rc = wb_rules_parse(r, text, err, sizeof(err));
    free(text);
    if (rc) {
        wb_rules_free(r);
        return cli_fail(cli, rc, "%s: %s", path, err);
    }
    *out = r;
    return 0;
}

/* Names of the report's key sets, as printed and as JSON fields. */
static const char *const keyset_names[WB_KEYS_COUNT] = {
    "missing", "unexpected", "mismatched", "cast", "aliased"};

/* Prints the plan report of m for people: a summary, then each non-empty
 * key set one key a line.  ntarget is the target's tensor count; rc the
 * load's outcome. */
static void print_plan(const char *ref, const char *target, size_t ntarget,
                       const wb_mapping *m, int rc) {
    printf("%-12s%s (version %" PRIu64 ")\n", "source", ref, wb_map_version(m));
    printf("%-12s%s (%zu tensors)\n", "target", target, ntarget);
    printf("%-12s%s\n", "result", rc ? "error: nothing would be loaded" : "ok");
    printf("%-12s%zu of %zu target tensors\n", "mapped",
           rc ? (size_t)0 : wb_map_count(m), ntarget);
    for (int w = 0; w < WB_KEYS_COUNT; w++)
        printf("%-12s%zu\n", keyset_names[w], wb_map_keys_count(m, w));
    for (int w = 0; w < WB_KEYS_COUNT; w++) {
        size_t n = wb_map_keys_count(m, w);
        if (n == 0)
            continue;
        printf("\n%s keys:\n", keyset_names[w]);
        for (size_t i = 0; i < n; i++)
            printf("  %s\n", wb_map_key(m, w, i));
    }
    fflush(stdout);
}

/* Builds the JSON document of a plan; ntarget is the target's tensor
 * count, rc the load's outcome. */
static json_t *plan_json(const char *model, const char *target, size_t ntarget,
                         const wb_mapping *m, int rc) {
    json_t *o =
        json_pack("{s:s, s:I, s:s, s:I, s:b, s:I}", "model", model, "version",
                  (json_int_t)wb_map_version(m), "target", target,
                  "target_tensors", (json_int_t)ntarget, "ok", rc == 0,
                  "mapped", (json_int_t)(rc == 0 ? wb_map_count(m) : 0));
    for (int w = 0; o && w < WB_KEYS_COUNT; w++) {
        json_t *arr = json_array();
        for (size_t i = 0; arr && i < wb_map_keys_count(m, w); i++)
            json_array_append_new(arr, json_string(wb_map_key(m, w, i)));
        json_object_set_new(o, keyset_names[w], arr);
    }
    if (o && rc) {
        json_object_set_new(o, "error", json_string(wb_err_name(rc)));
        json_object_set_new(o, "code", json_integer(rc));
        json_object_set_new(o, "message", json_string(wb_map_error_text(m)));
    }
    return o;
}

/* `plan MODEL[@VERSION] --target FILE [--rules FILE] [--no-strict]
 * [--ignore-mismatched-sizes]`: the load report, as a dry run. */
static int cmd_plan(wb_cli *cli, const wb_cli_args *a) {
    char model[WB_MAX_NAME + 1];
    uint64_t version;
    if (cli_parse_ref(a->pos[0], model, sizeof(model), &version))
        return WB_CLI_USAGE;
    if (a->target == NULL)
        return cli_usage_error("plan: --target FILE.safetensors is required");
    wb_schema *s = NULL;
    wb_rules *r = NULL;
    wb_mapping *m = NULL;
    size_t ntarget = 0;
    int rc = load_target(cli, a->target, &s, &ntarget);
    if (rc == 0 && a->rules)
        rc = load_rules(cli, a->rules, &r);
    if (rc == 0)
        rc = cli_connect(cli);
    if (rc) {
        wb_schema_free(s);
        wb_rules_free(r);
        return rc;
    }
    int flags = WB_MAP_PLAN | (a->no_strict ? WB_MAP_NONSTRICT : 0) |
                (a->ignore_mismatch ? WB_MAP_IGNORE_MISMATCH : 0);
    rc = wb_load(cli->c, model, version, s, r, flags, &m);
    wb_schema_free(s);
    wb_rules_free(r);
    if (rc && rc != WB_ELOAD) {
        wb_unmap(m);
        return cli_fail_client(cli, rc);
    }
    if (cli->json) {
        int out = cli_json_print(plan_json(model, a->target, ntarget, m, rc));
        if (rc)
            fprintf(stderr, "%s\n", wb_map_error_text(m));
        wb_unmap(m);
        return rc || out ? WB_CLI_FAIL : WB_CLI_OK;
    }
    char ref[WB_MAX_NAME + WB_CLI_SIZE_BUF];
    print_plan(ref_str(model, version, ref, sizeof(ref)), a->target, ntarget, m,
               rc);
    if (rc)
        fprintf(stderr, "%s\n", wb_map_error_text(m));
    wb_unmap(m);
    return rc ? WB_CLI_FAIL : WB_CLI_OK;
}

/* ---------------------------------------------------------------- rm */

/* `rm MODEL[@VERSION]`: drops one version, or the whole model. */
static int cmd_rm(wb_cli *cli, const wb_cli_args *a) {
    char model[WB_MAX_NAME + 1];
    uint64_t version;
    if (cli_parse_ref(a->pos[0], model, sizeof(model), &version))
        return WB_CLI_USAGE;
    if (cli_connect(cli))
        return WB_CLI_FAIL;
    int rc = wb_drop(cli->c, model, version);
    if (rc)
        return cli_fail_client(cli, rc);
    if (cli->json)
        return cli_json_print(
            json_pack("{s:s, s:o, s:b}", "model", model, "version",
                      version ? json_integer((json_int_t)version) : json_null(),
                      "dropped", 1));
    if (version)
        printf("dropped %s@%" PRIu64 "\n", model, version);
    else
        printf("dropped %s (every version)\n", model);
    return WB_CLI_OK;
}

/* ---------------------------------------------------------------- watch */

/* `watch MODEL`: prints each version committed from now on, one line each
 * (a JSON object per line with --json), until killed. */
static int cmd_watch(wb_cli *cli, const wb_cli_args *a) {
    const char *model = a->pos[0];
    if (cli_connect(cli))
        return WB_CLI_FAIL;
    uint64_t last = 0;
    int rc = wb_watch(cli->c, model, 0, 0, &last);
    while (rc == 0) {
        uint64_t v = last;
        rc = wb_watch(cli->c, model, last, -1, &v);
        if (rc || v <= last)
            continue;
        last = v;
        if (cli->json) {
            json_t *o = json_pack("{s:s, s:I}", "model", model, "version",
                                  (json_int_t)v);
            char *s =
                o ? json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
            json_decref(o);
            if (s)
                printf("%s\n", s);
            free(s);
        } else {
            printf("%" PRIu64 "\n", v);
        }
        if (fflush(stdout) != 0)
            return cli_fail(cli, WB_EIO, "stdout: %s", strerror(errno));
    }
    return cli_fail_client(cli, rc);
}

/* ---------------------------------------------------------------- main */

static const command commands[] = {
    {"status", cmd_status, 0, 0, 0, "",
     "version, uptime, memory, models, clients, holds"},
    {"ls", cmd_ls, 0, 0, 0, "",
     "models: latest version, versions, pinned, tensors, size, readers"},
    {"info", cmd_info, 1, 1, 0, "MODEL[@VERSION]",
     "tensors (name, dtype, shape, size) and metadata"},
    {"import", cmd_import, 2, 2, 0,
     "[--meta KEY=VALUE]... FILE.safetensors|INDEX.json|DIR MODEL",
     "publish a safetensors file, or a sharded checkpoint (its "
     "model.safetensors.index.json, or a directory holding it or "
     "model.safetensors), as one new version; --meta sets a metadata "
     "entry"},
    {"export", cmd_export, 2, 2, 0, "MODEL[@VERSION] FILE|-",
     "write a version as a safetensors file, or to stdout for -"},
    {"plan", cmd_plan, 1, 1, 1,
     "MODEL[@VERSION] --target FILE.safetensors [--rules FILE] "
     "[--no-strict] [--ignore-mismatched-sizes]",
     "dry-run load report against a target"},
    {"rm", cmd_rm, 1, 1, 0, "MODEL[@VERSION]",
     "drop a version or a whole model"},
    {"watch", cmd_watch, 1, 1, 0, "MODEL",
     "print each new version as it is committed"},
    {"pin", cmd_pin, 1, 1, 0, "MODEL@VERSION",
     "keep a version whatever wbrokerd --keep says (rm still drops it)"},
    {"unpin", cmd_unpin, 1, 1, 0, "MODEL@VERSION",
     "let retention retire a version again"},
    {"holders", cmd_holders, 0, 1, 0, "[MODEL]",
     "processes holding versions: pid, user, command, model@version, size, "
     "since"},
};

#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

/* Prints the full help to f. */
static void print_help(FILE *f) {
    fputs(usage_head, f);
    fputs("\ncommands:\n", f);
    for (size_t i = 0; i < N_COMMANDS; i++) {
        const command *c = &commands[i];
        if (*c->args)
            fprintf(f, "  %s %s\n      %s\n", c->name, c->args, c->help);
        else
            fprintf(f, "  %s\n      %s\n", c->name, c->help);
    }
    fputs(usage_options, f);
}

/* Returns the value of option opt at argv[*i] ("--opt VALUE" or
 * "--opt=VALUE"), advancing *i past it, or NULL if argv[*i] is not opt.
 * Sets *missing when the option is there without a value. */
static const char *opt_value(int argc, char **argv, int *i, const char *opt,
                             int *missing) {
    size_t n = strlen(opt);
    if (strncmp(argv[*i], opt, n) != 0)
        return NULL;
    if (argv[*i][n] == '=')
        return argv[*i] + n + 1;
    if (argv[*i][n] != '\0')
        return NULL;
    if (*i + 1 >= argc) {
        *missing = 1;
        return NULL;
    }
    *i += 1;
    return argv[*i];
}

/* Parses a command's arguments from argv[first..argc) into *a; --json may
 * also appear among them.  Returns 0, WB_CLI_USAGE after printing why, or
 * -1 when --help was asked for (after printing the command's usage). */
static int parse_args(wb_cli *cli, const command *cmd, int argc, char **argv,
                      int first, wb_cli_args *a) {
    memset(a, 0, sizeof(*a));
    int only_pos = 0;
    for (int i = first; i < argc; i++) {
        const char *s = argv[i], *v;
        int missing = 0;
        if (only_pos || s[0] != '-' || s[1] == '\0') {
            if (a->npos >= cmd->max_pos)
                return cli_usage_error("%s: unexpected argument '%s'",
                                       cmd->name, s);
            a->pos[a->npos++] = s;
        } else if (strcmp(s, "--") == 0) {
            only_pos = 1;
        } else if (strcmp(s, "--help") == 0 || strcmp(s, "-h") == 0) {
            printf("usage: wbroker [--socket PATH] [--json] %s %s\n  %s\n",
                   cmd->name, cmd->args, cmd->help);
            return -1;
        } else if (strcmp(s, "--json") == 0) {
            cli->json = 1;
        } else if (cmd->plan_opts &&
                   ((v = opt_value(argc, argv, &i, "--target", &missing)) ||
                    missing)) {
            if (missing)
                return cli_usage_error("%s: --target needs a file", cmd->name);
            a->target = v;
        } else if (cmd->plan_opts &&
                   ((v = opt_value(argc, argv, &i, "--rules", &missing)) ||
                    missing)) {
            if (missing)
                return cli_usage_error("%s: --rules needs a file", cmd->name);
            a->rules = v;
        } else if (cmd->run == cmd_import &&
                   ((v = opt_value(argc, argv, &i, "--meta", &missing)) ||
                    missing)) {
            if (missing || v[0] == '=' || strchr(v, '=') == NULL)
                return cli_usage_error("%s: --meta needs KEY=VALUE", cmd->name);
            if (a->nmeta >= WB_CLI_MAX_META)
                return cli_usage_error("%s: more than %d --meta options",
                                       cmd->name, WB_CLI_MAX_META);
            a->meta[a->nmeta++] = v;
        } else if (cmd->plan_opts && strcmp(s, "--no-strict") == 0) {
            a->no_strict = 1;
        } else if (cmd->plan_opts &&
                   strcmp(s, "--ignore-mismatched-sizes") == 0) {
            a->ignore_mismatch = 1;
        } else {
            return cli_usage_error("%s: unknown option '%s'", cmd->name, s);
        }
    }
    if (a->npos < cmd->min_pos)
        return cli_usage_error("%s: missing argument (usage: wbroker %s %s)",
                               cmd->name, cmd->name, cmd->args);
    return 0;
}

int main(int argc, char **argv) {
    wb_cli cli = {0};
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        const char *s = argv[i], *v;
        int missing = 0;
        if (strcmp(s, "--") == 0) {
            i++;
            break;
        } else if ((v = opt_value(argc, argv, &i, "--socket", &missing)) ||
                   missing) {
            if (missing || *v == '\0')
                return cli_usage_error("--socket needs a path");
            cli.socket = v;
        } else if (strcmp(s, "--json") == 0) {
            cli.json = 1;
        } else if (strcmp(s, "--help") == 0 || strcmp(s, "-h") == 0) {
            print_help(stdout);
            return WB_CLI_OK;
        } else if (strcmp(s, "--version") == 0 || strcmp(s, "-V") == 0) {
            printf("wbroker %s\n", wb_version_string());
            return WB_CLI_OK;
        } else {
            return cli_usage_error("unknown option '%s'", s);
        }
    }
    if (i >= argc)
        return cli_usage_error("missing command");
    const command *cmd = NULL;
    for (size_t k = 0; k < N_COMMANDS; k++)
        if (strcmp(argv[i], commands[k].name) == 0)
            cmd = &commands[k];
    if (strcmp(argv[i], "help") == 0) {
        print_help(stdout);
        return WB_CLI_OK;
    }
    if (cmd == NULL)
        return cli_usage_error("unknown command '%s'", argv[i]);
    wb_cli_args a;
    int rc = parse_args(&cli, cmd, argc, argv, i + 1, &a);
    if (rc)
        return rc < 0 ? WB_CLI_OK : rc;
    rc = cmd->run(&cli, &a);
    wb_close(cli.c);
    return rc;
}
