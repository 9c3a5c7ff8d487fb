#ifndef CWARRENAMQP_H
#define CWARRENAMQP_H

#include <amqp.h>

// amqp_login is variadic (the SASL method's arguments follow), and Swift cannot call a variadic C
// function: this wrapper fixes the method to PLAIN and passes user and password.
amqp_rpc_reply_t CWarrenAMQP_login_plain(amqp_connection_state_t state, char const *vhost, int channel_max,
                                         int frame_max, int heartbeat, char const *user, char const *password);

// Swift's Glibc module does not export <sys/eventfd.h>: a non-blocking, close-on-exec eventfd that
// wakes the connection's I/O thread out of poll(). Returns -1 with errno set on failure.
int CWarrenAMQP_eventfd(void);

// Waits until `eventfd` or `socket` (when >= 0) is readable, or `nanoseconds` pass: ppoll(), which
// Swift's Glibc module does not export, for waits shorter than poll()'s millisecond. Returns
// 1 when the eventfd is readable, 0 when it is not, -1 with errno set on failure.
int CWarrenAMQP_wait(int eventfd, int socket, long long nanoseconds);

#endif
