/* lifecycle.c -- wbroker pin, unpin and holders: keeping versions from
 * retention and seeing which processes still hold which version. */
#include <inttypes.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>

#include "cli.h"

#define WB_CLI_TIME_BUF 32 /* Bytes of a formatted local time. */
#define WB_CLI_USER_BUF 64 /* Bytes of a user name or number. */

/* `pin MODEL@VERSION` (pin 1) and `unpin MODEL@VERSION` (pin 0). */
static int pin_cmd(wb_cli *cli, const wb_cli_args *a, int pin) {
    char model[WB_MAX_NAME + 1];
    uint64_t version;
    if (cli_parse_ref(a->pos[0], model, sizeof(model), &version))
        return WB_CLI_USAGE;
    if (version == 0)
        return cli_usage_error("%s: '%s': say which version (MODEL@VERSION)",
                               pin ? "pin" : "unpin", a->pos[0]);
    if (cli_connect(cli))
        return WB_CLI_FAIL;
    int rc =
        pin ? wb_pin(cli->c, model, version) : wb_unpin(cli->c, model, version);
    if (rc)
        return cli_fail_client(cli, rc);
    if (cli->json)
        return cli_json_print(json_pack("{s:s, s:I, s:b}", "model", model,
                                        "version", (json_int_t)version,
                                        "pinned", pin));
    printf("%s %s@%" PRIu64 "\n", pin ? "pinned" : "unpinned", model, version);
    return WB_CLI_OK;
}

int cmd_pin(wb_cli *cli, const wb_cli_args *a) {
    return pin_cmd(cli, a, 1);
}

int cmd_unpin(wb_cli *cli, const wb_cli_args *a) {
    return pin_cmd(cli, a, 0);
}

/* The name of user uid, or its number when it has none. */
static const char *user_name(uint32_t uid, char *buf, size_t len) {
    struct passwd pw, *res = NULL;
    char tmp[1024];
    if (getpwuid_r((uid_t)uid, &pw, tmp, sizeof(tmp), &res) == 0 && res)
        snprintf(buf, len, "%s", res->pw_name);
    else
        snprintf(buf, len, "%" PRIu32, uid);
    return buf;
}

/* Seconds since the epoch as local time, "2026-12-02 15:04:05". */
static const char *local_time(uint64_t t, char *buf, size_t len) {
    time_t tt = (time_t)t;
    struct tm tm;
    if (localtime_r(&tt, &tm) == NULL ||
        strftime(buf, len, "%Y-%m-%d %H:%M:%S", &tm) == 0)
        snprintf(buf, len, "%" PRIu64, t);
    return buf;
}

int cmd_holders(wb_cli *cli, const wb_cli_args *a) {
    const char *model = a->npos ? a->pos[0] : NULL;
    if (cli_connect(cli))
        return WB_CLI_FAIL;
    wb_holder *h = NULL;
    size_t n = 0;
    int rc = wb_holders(cli->c, model, &h, &n);
    if (rc)
        return cli_fail_client(cli, rc);
    char user[WB_CLI_USER_BUF];
    if (cli->json) {
        json_t *arr = json_array();
        for (size_t i = 0; arr && i < n; i++)
            json_array_append_new(
                arr,
                json_pack("{s:I, s:I, s:s, s:s, s:s, s:I, s:I, s:I}", "pid",
                          (json_int_t)h[i].pid, "uid", (json_int_t)h[i].uid,
                          "user", user_name(h[i].uid, user, sizeof(user)),
                          "command", h[i].comm, "model", h[i].model, "version",
                          (json_int_t)h[i].version, "bytes",
                          (json_int_t)h[i].bytes, "since",
                          (json_int_t)h[i].since));
        wb_holders_free(h, n);
        return cli_json_print(arr);
    }
    static const char *const head[] = {">PID",  "USER",  "COMMAND", "VERSION",
                                       ">SIZE", "SINCE", NULL};
    wb_cli_table t;
    cli_table_init(&t, head);
    rc = WB_CLI_OK;
    for (size_t i = 0; i < n && rc == WB_CLI_OK; i++) {
        char pid[WB_CLI_SIZE_BUF], size[WB_CLI_SIZE_BUF],
            since[WB_CLI_TIME_BUF], ref[WB_MAX_NAME + 32];
        snprintf(pid, sizeof(pid), "%" PRIu32, h[i].pid);
        snprintf(ref, sizeof(ref), "%s@%" PRIu64, h[i].model, h[i].version);
        const char *row[] = {pid,
                             user_name(h[i].uid, user, sizeof(user)),
                             h[i].comm,
                             ref,
                             cli_size(h[i].bytes, size, sizeof(size)),
                             local_time(h[i].since, since, sizeof(since))};
        if (cli_table_add(&t, row))
            rc = cli_fail(cli, WB_ENOMEM, "building the table");
    }
    if (rc == WB_CLI_OK)
        cli_table_print(&t);
    cli_table_free(&t);
    wb_holders_free(h, n);
    return rc;
}
