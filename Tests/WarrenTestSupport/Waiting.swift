public import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A wait that ran out of time, saying what it waited for.
public struct TimedOut: Error, CustomStringConvertible {
    public let description: String
    public init(description: String) { self.description = description }
}

/// Waits (with a deadline) until `condition` holds, checking every few milliseconds.
public func waitUntil(_ what: String, within seconds: Double = 10, _ condition: @Sendable () async -> Bool) async throws {
    let deadline = ContinuousClock.now + .seconds(seconds)
    while await !condition() {
        guard ContinuousClock.now < deadline else { throw TimedOut(description: "timed out after \(seconds) s waiting for \(what)") }
        try await Task.sleep(for: .milliseconds(5))
    }
}

/// How a child process ended.
public enum ProcessExit: Equatable, Sendable {
    case exited(Int32)
    case signalled(Int32)

    /// Waits (bounded) for `pid` to end and reaps it.
    public static func wait(for pid: pid_t, within seconds: Double) async throws -> ProcessExit {
        let result = Mutex<ProcessExit?>(nil)
        try await waitUntil("process \(pid) to exit", within: seconds) {
            var status: Int32 = 0
            guard waitpid(pid, &status, WNOHANG) == pid else { return false }
            let signal = status & 0x7F
            result.withLock { $0 = signal == 0 ? .exited((status >> 8) & 0xFF) : .signalled(signal) }
            return true
        }
        return result.withLock { $0 }!
    }
}
