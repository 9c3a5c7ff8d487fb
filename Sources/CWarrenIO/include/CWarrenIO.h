#ifndef CWARRENIO_H
#define CWARRENIO_H

// What Swift's Glibc module does not export, for the I/O threads of the broker and store clients.

// A non-blocking, close-on-exec eventfd (<sys/eventfd.h>): wakes an I/O thread out of its wait.
// Returns -1 with errno set on failure.
int CWarrenIO_eventfd(void);

// Waits until `eventfd` or `socket` (when >= 0) is readable, or `nanoseconds` pass: ppoll(), for
// waits shorter than poll()'s millisecond. Returns 1 when the eventfd is readable, 0 when it is
// not, -1 with errno set on failure.
int CWarrenIO_wait(int eventfd, int socket, long long nanoseconds);

// Names the calling thread (the first 15 bytes of `name`) for ps, top and debuggers
// (pthread_setname_np). Returns 0, or an error number.
int CWarrenIO_name_thread(char const *name);

#endif
