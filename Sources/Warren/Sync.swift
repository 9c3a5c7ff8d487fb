import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A mutex that closures and tasks can share. Package-wide: every Warren module (and its tests)
/// uses this one.
///
/// A glibc adaptive mutex rather than `Synchronization.Mutex`: on Linux, Swift 6.3's `Mutex` is a
/// priority-inheritance futex, which hands a contended lock over through the kernel
/// (swiftlang/swift#88440). The queue's locks are contended by the I/O thread, the dispatcher
/// and every settling job; with this lock the kernel's rt_mutex work leaves the profile and the
/// AMQP drain costs about 5 % less CPU per job (`warren bench --amqp-url`, runs side by side).
/// `@unchecked Sendable`: `value` is only touched under the mutex.
package final class Locked<Value>: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var value: Value
    package init(_ value: sending Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        var attributes = pthread_mutexattr_t()
        pthread_mutexattr_init(&attributes)
        pthread_mutexattr_settype(&attributes, Int32(PTHREAD_MUTEX_ADAPTIVE_NP))
        pthread_mutex_init(mutex, &attributes)
        pthread_mutexattr_destroy(&attributes)
    }
    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }
    package func withLock<Result, Failure: Error>(
        _ body: (inout sending Value) throws(Failure) -> sending Result
    ) throws(Failure) -> sending Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
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

    /// How many are still awaited (0 when open).
    package var count: Int { state.withLock { max(0, $0.count) } }

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
