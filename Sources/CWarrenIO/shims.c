#define _GNU_SOURCE
#include <poll.h>
#include <pthread.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include "CWarrenIO.h"

int CWarrenIO_eventfd(void) { return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }

int CWarrenIO_wait(int eventfd, int socket, long long nanoseconds) {
    struct pollfd fds[2] = {{.fd = eventfd, .events = POLLIN}, {.fd = socket, .events = POLLIN}};
    struct timespec timeout = {.tv_sec = nanoseconds / 1000000000LL, .tv_nsec = nanoseconds % 1000000000LL};
    if (ppoll(fds, socket >= 0 ? 2 : 1, &timeout, NULL) < 0) return -1;
    return fds[0].revents != 0;
}

int CWarrenIO_name_thread(char const *name) {
    char shortened[16];
    strncpy(shortened, name, sizeof shortened - 1);
    shortened[sizeof shortened - 1] = '\0';
    return pthread_setname_np(pthread_self(), shortened);
}
