import Foundation

/// Runs blocking work (rabbitmq-c calls that wait on the network) on a thread of its own and
/// awaits its result, so the cooperative pool's few threads never block on it.
func onThread<T: Sendable>(_ work: @escaping @Sendable () throws(AMQPError) -> T) async throws(AMQPError) -> T {
    let result: Result<T, AMQPError> = await withCheckedContinuation { continuation in
        let thread = Thread {
            do throws(AMQPError) { continuation.resume(returning: .success(try work())) } catch {
                continuation.resume(returning: .failure(error))
            }
        }
        thread.name = "warren-amqp-tools"
        thread.start()
    }
    return try result.get()
}
