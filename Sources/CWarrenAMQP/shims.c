#include <sys/eventfd.h>
#include "CWarrenAMQP.h"

amqp_rpc_reply_t CWarrenAMQP_login_plain(amqp_connection_state_t state, char const *vhost, int channel_max,
                                         int frame_max, int heartbeat, char const *user, char const *password) {
    return amqp_login(state, vhost, channel_max, frame_max, heartbeat, AMQP_SASL_METHOD_PLAIN, user, password);
}

int CWarrenAMQP_eventfd(void) { return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }
