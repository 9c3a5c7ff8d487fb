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

#endif
