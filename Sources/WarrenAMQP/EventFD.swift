import CWarrenAMQP
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A Linux eventfd: wakes the I/O thread out of `poll` when a command arrives.
final class EventFD: Sendable {
    let descriptor: Int32

    init() {
        descriptor = CWarrenAMQP_eventfd()
        precondition(descriptor >= 0, "eventfd failed: \(String(cString: strerror(errno)))")
    }

    deinit { close(descriptor) }

    func signal() {
        var one: UInt64 = 1
        _ = withUnsafeBytes(of: &one) { write(descriptor, $0.baseAddress, 8) }
    }

    func drain() {
        var value: UInt64 = 0
        _ = withUnsafeMutableBytes(of: &value) { read(descriptor, $0.baseAddress, 8) }
    }

    /// Waits until the socket is readable, the eventfd is signalled, or `milliseconds` pass.
    func wait(socket: Int32?, milliseconds: Int32) {
        var fds = [pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)]
        if let socket, socket >= 0 { fds.append(pollfd(fd: socket, events: Int16(POLLIN), revents: 0)) }
        _ = poll(&fds, nfds_t(fds.count), milliseconds)
        if fds[0].revents != 0 { drain() }
    }
}
