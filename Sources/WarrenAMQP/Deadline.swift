import Warren

/// Waiting for something that cannot be cancelled (a command queued for the connection's thread),
/// but not for longer than a deadline.
enum Deadline {
    /// Runs `operation` and returns whether it finished within `limit`; when it did not, it goes
    /// on in the background and its end is ignored.
    static func first(of limit: Duration, _ operation: @escaping @Sendable () async -> Void) async -> Bool {
        let once = Locked<CheckedContinuation<Bool, Never>?>(nil)
        let finish: @Sendable (Bool) -> Void = { finished in once.withLock { $0.take() }?.resume(returning: finished) }
        return await withCheckedContinuation { continuation in
            once.withLock { $0 = continuation }
            Task {
                await operation()
                finish(true)
            }
            Task {
                try? await Task.sleep(for: limit)
                finish(false)
            }
        }
    }
}
