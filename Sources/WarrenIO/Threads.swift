import CWarrenIO
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Starts `body` on a new detached thread named `name` (its first 15 bytes, as the kernel allows).
/// A thread that cannot be created (the process is out of threads or memory) is a fatal error, as
/// it is for Foundation's `Thread`.
package func startThread(named name: String, _ body: @escaping @Sendable () -> Void) {
    final class Start: @unchecked Sendable {
        let name: String
        let body: @Sendable () -> Void
        init(name: String, body: @escaping @Sendable () -> Void) { (self.name, self.body) = (name, body) }
    }
    let start = Unmanaged.passRetained(Start(name: name, body: body)).toOpaque()
    var attributes = pthread_attr_t()
    pthread_attr_init(&attributes)
    defer { pthread_attr_destroy(&attributes) }
    pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
    var thread = pthread_t()
    let result = pthread_create(&thread, &attributes, { raw in
        let start = Unmanaged<Start>.fromOpaque(raw!).takeRetainedValue()
        _ = CWarrenIO_name_thread(start.name)
        start.body()
        return nil
    }, start)
    guard result == 0 else {
        Unmanaged<Start>.fromOpaque(start).release()
        fatalError("cannot start thread \(name): error \(result)")
    }
}

/// Runs blocking work (C calls that wait on the network) on a thread of its own, named `name`,
/// and awaits its result, so the cooperative pool's few threads never block on it.
package func onThread<T: Sendable, Failure: Error>(
    named name: String, _ work: @escaping @Sendable () throws(Failure) -> T
) async throws(Failure) -> T {
    let result: Result<T, Failure> = await withCheckedContinuation { continuation in
        startThread(named: name) {
            do throws(Failure) { continuation.resume(returning: .success(try work())) } catch {
                continuation.resume(returning: .failure(error))
            }
        }
    }
    return try result.get()
}
