// rabbitmq-c 0.11 as Debian ships it (librabbitmq-dev): headers at the top of the include path.
#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include <amqp_ssl_socket.h>
