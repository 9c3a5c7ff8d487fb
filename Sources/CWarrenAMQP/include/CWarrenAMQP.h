#ifndef CWARRENAMQP_H
#define CWARRENAMQP_H

#include <amqp.h>

// amqp_login_with_properties is variadic (the SASL method's arguments follow), and Swift cannot call
// a variadic C function: this wrapper fixes the method to PLAIN and passes user and password. The
// properties carry the product, the connection's name and the capabilities RabbitMQ only uses
// when a client announces them, such as consumer_cancel_notify; rabbitmq-c merges them with its
// own defaults.
amqp_rpc_reply_t CWarrenAMQP_login_plain_properties(amqp_connection_state_t state, char const *vhost, int channel_max,
                                                    int frame_max, int heartbeat, amqp_table_t const *properties,
                                                    char const *user, char const *password);

// Swift's Glibc module does not export <sys/eventfd.h>: a non-blocking, close-on-exec eventfd that
// wakes the connection's I/O thread out of poll(). Returns -1 with errno set on failure.
int CWarrenAMQP_eventfd(void);

// Waits until `eventfd` or `socket` (when >= 0) is readable, or `nanoseconds` pass: ppoll(), which
// Swift's Glibc module does not export, for waits shorter than poll()'s millisecond. Returns
// 1 when the eventfd is readable, 0 when it is not, -1 with errno set on failure.
int CWarrenAMQP_wait(int eventfd, int socket, long long nanoseconds);

// Names the calling thread (the first 15 bytes of `name`) for ps, top and debuggers: Swift's Glibc
// module does not export pthread_setname_np. Returns 0, or an error number.
int CWarrenAMQP_name_thread(char const *name);

#endif
