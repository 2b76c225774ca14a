/* dispatch.h -- The request layer as the connection layer sees it. */
#ifndef WB_DAEMON_DISPATCH_H
#define WB_DAEMON_DISPATCH_H

#include "conn.h"

/* The callbacks wb__conn_listen() takes: sessions opened and closed,
 * frames decoded and handed to the handler their "op" names. */
extern const wb__conn_ops wb__dispatch_ops;

#endif
