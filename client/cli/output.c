/* output.c -- Tables, sizes, JSON documents and error reports of wbroker.
 *
 * People get aligned tables and sizes such as "1.2 GiB"; scripts that pass
 * --json get exactly one JSON document on stdout with the raw numbers.
 * Errors always go to stderr as "wbroker: <message>: <detail>", and with
 * --json also to stdout as {"error": NAME, "code": N, "message": DETAIL}
 * so that a script reading stdout sees why the command failed. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#define WB_CLI_TABLE_MIN_ROWS 16 /* First allocation of a table's rows. */
#define WB_CLI_COL_GAP 2         /* Spaces between two table columns. */

/* ---------------------------------------------------------------- formats */

const char *cli_size(uint64_t bytes, char *buf, size_t len) {
    static const char *const units[] = {"KiB", "MiB", "GiB",
                                        "TiB", "PiB", "EiB"};
    if (bytes < 1024) {
        snprintf(buf, len, "%" PRIu64 " B", bytes);
        return buf;
    }
    double v = (double)bytes / 1024.0;
    size_t u = 0;
    while (v >= 1024.0 && u + 1 < sizeof(units) / sizeof(units[0])) {
        v /= 1024.0;
        u++;
    }
    snprintf(buf, len, v < 10.0 ? "%.1f %s" : "%.0f %s", v, units[u]);
    return buf;
}

const char *cli_duration(double seconds, char *buf, size_t len) {
    uint64_t s = seconds > 0 ? (uint64_t)seconds : 0;
    uint64_t d = s / 86400, h = s / 3600 % 24, m = s / 60 % 60;
    if (d)
        snprintf(buf, len, "%" PRIu64 "d %" PRIu64 "h", d, h);
    else if (h)
        snprintf(buf, len, "%" PRIu64 "h %" PRIu64 "m", h, m);
    else if (m)
        snprintf(buf, len, "%" PRIu64 "m %" PRIu64 "s", m, s % 60);
    else
        snprintf(buf, len, "%.1fs", seconds > 0 ? seconds : 0.0);
    return buf;
}

const char *cli_shape(int ndim, const int64_t *shape, char *buf, size_t len) {
    size_t off = 0;
    int n = snprintf(buf, len, "[");
    off = n > 0 ? (size_t)n : 0;
    for (int i = 0; i < ndim && off < len; i++) {
        n = snprintf(buf + off, len - off, "%s%" PRId64, i ? ", " : "",
                     shape[i]);
        off += n > 0 ? (size_t)n : 0;
    }
    if (off < len)
        snprintf(buf + off, len - off, "]");
    return buf;
}

json_t *cli_json_shape(int ndim, const int64_t *shape) {
    json_t *a = json_array();
    for (int i = 0; a && i < ndim; i++)
        json_array_append_new(a, json_integer((json_int_t)shape[i]));
    return a;
}

/* ---------------------------------------------------------------- errors */

/* Reports code with an already formatted detail. */
static int report(const wb_cli *cli, int code, const char *detail) {
    fflush(stdout);
    if (detail && *detail)
        fprintf(stderr, "wbroker: %s: %s\n", wb_strerror(code), detail);
    else
        fprintf(stderr, "wbroker: %s\n", wb_strerror(code));
    if (cli && cli->json) {
        json_t *o = json_pack("{s:s, s:i, s:s}", "error", wb_err_name(code),
                              "code", code, "message",
                              detail && *detail ? detail : wb_strerror(code));
        cli_json_print(o);
    }
    return WB_CLI_FAIL;
}

int cli_fail(const wb_cli *cli, int code, const char *fmt, ...) {
    char detail[WB_CLI_ERR_BUF];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    return report(cli, code, detail);
}

int cli_fail_client(const wb_cli *cli, int rc) {
    return report(cli, rc, cli ? wb_errmsg(cli->c) : "");
}

/* ---------------------------------------------------------------- JSON */

int cli_json_print(json_t *root) {
    if (root == NULL) {
        fprintf(stderr, "wbroker: %s\n", wb_strerror(WB_ENOMEM));
        return WB_CLI_FAIL;
    }
    int rc = json_dumpf(root, stdout, JSON_INDENT(2) | JSON_ENSURE_ASCII);
    json_decref(root);
    if (rc == 0)
        rc = fputc('\n', stdout) == EOF;
    if (fflush(stdout) != 0)
        rc = -1;
    return rc ? WB_CLI_FAIL : WB_CLI_OK;
}

/* ---------------------------------------------------------------- tables */

void cli_table_init(wb_cli_table *t, const char *const *headers) {
    memset(t, 0, sizeof(*t));
    for (size_t i = 0; headers[i] && i < WB_CLI_MAX_COLS; i++) {
        const char *h = headers[i];
        t->right[i] = h[0] == '>';
        t->head[i] = h + t->right[i];
        t->width[i] = strlen(t->head[i]);
        t->ncols = i + 1;
    }
}

int cli_table_add(wb_cli_table *t, const char *const *cells) {
    if (t->nrows == t->cap) {
        size_t ncap = t->cap ? t->cap * 2 : WB_CLI_TABLE_MIN_ROWS;
        char **p = realloc(t->cells, ncap * t->ncols * sizeof(char *));
        if (p == NULL)
            return -1;
        t->cells = p;
        t->cap = ncap;
    }
    char **row = t->cells + t->nrows * t->ncols;
    for (size_t i = 0; i < t->ncols; i++) {
        row[i] = strdup(cells[i] ? cells[i] : "");
        if (row[i] == NULL) {
            while (i > 0)
                free(row[--i]);
            return -1;
        }
    }
    for (size_t i = 0; i < t->ncols; i++) {
        size_t w = strlen(row[i]);
        if (w > t->width[i])
            t->width[i] = w;
    }
    t->nrows++;
    return 0;
}

/* Prints one row of cells, padded; the last column is not padded on the
 * right so lines carry no trailing spaces. */
static void print_row(const wb_cli_table *t, const char *const *cells) {
    for (size_t i = 0; i < t->ncols; i++) {
        int w = (int)t->width[i];
        int last = i + 1 == t->ncols;
        if (t->right[i])
            printf("%*s", w, cells[i]);
        else
            printf("%-*s", last ? 0 : w, cells[i]);
        if (last)
            putchar('\n');
        else
            printf("%*s", WB_CLI_COL_GAP, "");
    }
}

void cli_table_print(const wb_cli_table *t) {
    print_row(t, t->head);
    for (size_t r = 0; r < t->nrows; r++)
        print_row(t, (const char *const *)(t->cells + r * t->ncols));
    fflush(stdout);
}

void cli_table_free(wb_cli_table *t) {
    if (t == NULL)
        return;
    for (size_t i = 0; i < t->nrows * t->ncols; i++)
        free(t->cells[i]);
    free(t->cells);
    t->cells = NULL;
    t->nrows = t->cap = 0;
}
