import Synchronization

/// A mutex that closures and tasks can share. Package-wide: every Warren module (and its tests)
/// uses this one.
package final class Locked<Value>: Sendable {
    private let mutex: Mutex<Value>
    package init(_ value: sending Value) { mutex = Mutex(value) }
    package func withLock<Result, Failure: Error>(
        _ body: (inout sending Value) throws(Failure) -> sending Result
    ) throws(Failure) -> sending Result {
        try mutex.withLock(body)
    }
}

/// Releases everyone waiting once its count is zero. The count may go up again (work in
/// progress: `add` before, `countDown` after), and `wait` returns at once while it is zero.
package final class Latch: Sendable {
    private let state: Mutex<(count: Int, waiters: [CheckedContinuation<Void, Never>])>

    package init(_ count: Int = 0) { state = Mutex((count, [])) }

    package func add(_ delta: Int = 1) {
        let released = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.count += delta
            guard state.count <= 0 else { return [] }
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in released { waiter.resume() }
    }

    package func countDown() { add(-1) }

    package func wait() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let open = state.withLock { state -> Bool in
                if state.count <= 0 { return true }
                state.waiters.append(continuation)
                return false
            }
            if open { continuation.resume() }
        }
    }
}
