import CWarrenIO
#if canImport(Glibc)
import Glibc
#endif

/// A Linux eventfd: wakes an I/O thread out of its wait when a command arrives.
package final class EventFD: Sendable {
    package let descriptor: Int32

    package init() {
        descriptor = CWarrenIO_eventfd()
        precondition(descriptor >= 0, "eventfd failed: \(String(cString: strerror(errno)))")
    }

    deinit { close(descriptor) }

    package func signal() {
        var one: UInt64 = 1
        _ = withUnsafeBytes(of: &one) { write(descriptor, $0.baseAddress, 8) }
    }

    package func drain() {
        var value: UInt64 = 0
        _ = withUnsafeMutableBytes(of: &value) { read(descriptor, $0.baseAddress, 8) }
    }

    /// Waits until the socket is readable, the eventfd is signalled, or `timeout` passes.
    package func wait(socket: Int32?, for timeout: Duration) {
        let (seconds, attoseconds) = timeout.components
        let nanoseconds = max(0, seconds) * 1_000_000_000 + max(0, attoseconds) / 1_000_000_000
        if CWarrenIO_wait(descriptor, socket ?? -1, nanoseconds) == 1 { drain() }
    }
}
