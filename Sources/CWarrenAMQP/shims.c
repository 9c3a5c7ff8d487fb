#include "CWarrenAMQP.h"

amqp_rpc_reply_t CWarrenAMQP_login_plain_properties(amqp_connection_state_t state, char const *vhost, int channel_max,
                                                    int frame_max, int heartbeat, amqp_table_t const *properties,
                                                    char const *user, char const *password) {
    return amqp_login_with_properties(state, vhost, channel_max, frame_max, heartbeat, properties, AMQP_SASL_METHOD_PLAIN,
                                      user, password);
}
