/* cli.h -- Shared state and helpers of the wbroker command-line tool.
 *
 * The CLI is split in four files: wbroker.c parses the command line and
 * runs the inspection commands (status, ls, info, plan, rm, watch),
 * transfer.c moves safetensors files in and out of the daemon (import,
 * export), lifecycle.c pins versions and lists their holders (pin, unpin,
 * holders), and output.c formats what people and scripts read: aligned
 * tables, human-readable sizes, JSON documents and error reports. */
#ifndef WB_CLI_H
#define WB_CLI_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "wbroker.h"

#define WB_CLI_OK 0    /* Exit status: success. */
#define WB_CLI_FAIL 1  /* Exit status: the daemon or the system failed. */
#define WB_CLI_USAGE 2 /* Exit status: bad usage. */

#define WB_CLI_MAX_ARGS 8    /* Positional arguments of one command. */
#define WB_CLI_MAX_COLS 8    /* Columns of one table. */
#define WB_CLI_SIZE_BUF 32   /* Bytes of a formatted size. */
#define WB_CLI_SHAPE_BUF 512 /* Bytes of a formatted shape. */
#define WB_CLI_ERR_BUF 1024  /* Bytes of an error detail. */
#define WB_CLI_PATH_BUF 4096 /* Bytes of a file path we build. */
#define WB_CLI_MAX_RULES_FILE (16u << 20) /* Max bytes of a rules file. */
#define WB_CLI_MAX_META 64 /* import --meta options of one run. */

/* Global options and the connection of one wbroker run. */
typedef struct wb_cli {
    const char *socket; /* --socket PATH, or NULL for the default. */
    int json;           /* 1 if --json was given. */
    wb_client *c;       /* Connection, once cli_connect() succeeded. */
} wb_cli;

/* A command's parsed arguments: positionals and its own options. */
typedef struct wb_cli_args {
    const char *pos[WB_CLI_MAX_ARGS];  /* Positional arguments, in order. */
    int npos;                          /* Positional arguments given. */
    const char *target;                /* plan --target FILE. */
    const char *rules;                 /* plan --rules FILE. */
    int no_strict;                     /* plan --no-strict. */
    int ignore_mismatch;               /* plan --ignore-mismatched-sizes. */
    const char *meta[WB_CLI_MAX_META]; /* import --meta KEY=VALUE, each. */
    int nmeta;                         /* --meta options given. */
} wb_cli_args;

/* One aligned text table, built row by row and printed at once. */
typedef struct wb_cli_table {
    size_t ncols;                      /* Columns. */
    const char *head[WB_CLI_MAX_COLS]; /* Column headers (not owned). */
    int right[WB_CLI_MAX_COLS];        /* 1 if a column is right-aligned. */
    size_t width[WB_CLI_MAX_COLS];     /* Widest cell so far, per column. */
    char **cells;                      /* Rows * ncols owned strings. */
    size_t nrows;                      /* Rows added. */
    size_t cap;                        /* Rows allocated in cells. */
} wb_cli_table;

/* ---------------------------------------------------------------- wbroker.c */

/* Connects cli->c to the daemon.  Returns WB_CLI_OK, or reports the failure
 * (naming the socket path) and returns WB_CLI_FAIL. */
int cli_connect(wb_cli *cli);

/* Splits "MODEL[@VERSION]" at its last '@' when digits alone follow it.
 * Writes the model name into model (modellen bytes) and the version (0 when
 * absent) into *version.  Returns 0, or -1 (after printing why) for an empty
 * model, an empty, zero or overflowing version, or a name too long. */
int cli_parse_ref(const char *ref, char *model, size_t modellen,
                  uint64_t *version);

/* Prints "wbroker: MSG" and a hint to stderr.  Returns WB_CLI_USAGE. */
int cli_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* --------------------------------------------------------------- transfer.c */

/* `import [--meta KEY=VALUE]... FILE.safetensors|INDEX.json|DIR MODEL`:
 * publishes a safetensors file or a sharded checkpoint as one version
 * (wb_import_file()), with metadata entries that replace the files'. */
int cmd_import(wb_cli *cli, const wb_cli_args *a);
/* `export MODEL[@VERSION] FILE|-`: writes a version as a safetensors file
 * (absent or regular; replaced atomically: wb_export_file()) or to
 * standard output (wb_export_fd()). */
int cmd_export(wb_cli *cli, const wb_cli_args *a);

/* -------------------------------------------------------------- lifecycle.c */

/* `pin MODEL@VERSION`: keeps a version whatever --keep says. */
int cmd_pin(wb_cli *cli, const wb_cli_args *a);
/* `unpin MODEL@VERSION`: lets retention retire it again. */
int cmd_unpin(wb_cli *cli, const wb_cli_args *a);
/* `holders [MODEL]`: processes holding versions (pid, user, command,
 * model@version, bytes, since). */
int cmd_holders(wb_cli *cli, const wb_cli_args *a);

/* ----------------------------------------------------------------- output.c */

/* Formats bytes for people ("512 B", "1.2 GiB") into buf. */
const char *cli_size(uint64_t bytes, char *buf, size_t len);
/* Formats a duration in seconds for people ("3d 4h", "2m 5s") into buf. */
const char *cli_duration(double seconds, char *buf, size_t len);
/* Formats a shape as "[3, 4]" ("[]" for a scalar) into buf. */
const char *cli_shape(int ndim, const int64_t *shape, char *buf, size_t len);
/* Builds a JSON array of a shape's sizes. */
json_t *cli_json_shape(int ndim, const int64_t *shape);

/* Reports an error with code (a WB_E* value) and a detail (may be NULL or
 * ""): "wbroker: <message>: <detail>" on stderr and, with --json, an error
 * document on stdout.  Returns WB_CLI_FAIL. */
int cli_fail(const wb_cli *cli, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Reports the failure rc of the last call on cli->c with its wb_errmsg().
 * Returns WB_CLI_FAIL. */
int cli_fail_client(const wb_cli *cli, int rc);

/* Prints root (stealing the reference) as one JSON document on stdout.
 * Returns WB_CLI_OK, or WB_CLI_FAIL if it could not be built or written. */
int cli_json_print(json_t *root);

/* Starts an empty table with ncols columns named by the NULL-terminated
 * headers; a header starting with '>' is right-aligned (the '>' is not
 * printed). */
void cli_table_init(wb_cli_table *t, const char *const *headers);
/* Appends a row of t->ncols cells (copied).  Returns 0 or -1 when out of
 * memory. */
int cli_table_add(wb_cli_table *t, const char *const *cells);
/* Prints t to stdout with columns padded to their widest cell. */
void cli_table_print(const wb_cli_table *t);
/* Frees the rows of t.  Accepts NULL. */
void cli_table_free(wb_cli_table *t);

#endif /* WB_CLI_H */
