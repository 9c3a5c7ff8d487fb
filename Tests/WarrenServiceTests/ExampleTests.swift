import Foundation
import Testing
import Warren
@testable import WarrenAMQP
import WarrenTestSupport

/// The embedding example (`Examples/TypedHandlers`), run as its README says, on the test broker.
@Suite("the embedding example")
struct ExampleTests {
    /// The example runs its worker in a swift-service-lifecycle `ServiceGroup`. SIGTERM while
    /// receipts are being sent: the running ones finish, the rest go back to RabbitMQ at once, and
    /// the process exits 0. Every job is either done (once) or queued again, none dead-lettered.
    @Test(.timeLimit(.minutes(10)))
    func sigtermDrainsTheExampleThroughItsServiceGroup() async throws {
        let binary = try await Self.exampleBinary()
        try await usingBroker {
            let queue = TestEnvironment.unique()
            let url = try AMQPURL(try TestEnvironment.amqpURL)
            let producer = AMQPBroker(AMQPBroker.Configuration(url: url, queue: queue))
            try await producer.waitUntilReady()
            let count = 40
            try await producer.enqueue((0..<count).map { index in
                Job(name: "orders.receipt", payload: Data(#"{"email":"buyer\#(index)@example.com","cents":\#(100 + index)}"#.utf8))
            })
            await producer.close()

            var environment = ProcessInfo.processInfo.environment
            environment["WARREN_BROKER_URL"] = try TestEnvironment.amqpURL
            environment["WARREN_QUEUE_NAME"] = queue
            let worker = try ChildProcess(binary, [], environment: environment)
            try await waitUntil("a receipt to be sent", within: 60) { worker.output.contains("sending the receipt") }
            worker.signal(SIGTERM)
            #expect(try await worker.exit(within: 30) == .exited(0), "\(worker.output)")
            let sent = worker.lines.filter { $0.contains("sending the receipt") }.count
            #expect(worker.output.contains("drained and stopped"), "\(worker.output)")

            let raw = try RawConnection(url: url)
            defer { raw.close() }
            let queued = try raw.declareQueue("\(queue).normal", passive: true).messages
            let dead = try raw.declareQueue("\(queue).dead", passive: true).messages
            #expect(sent >= 1 && queued >= 1, "some ran, the rest went back (\(sent) sent, \(queued) queued)")
            #expect(sent + queued == count && dead == 0, "each job done once or queued again: \(sent) sent, \(queued) queued, \(dead) dead")
            try TestBrokerQueues.delete(queue, on: raw)
        }
    }

    /// `swift build --package-path Examples/TypedHandlers`, as `make test` does before the tests
    /// (built here when missing): the example's executable.
    static func exampleBinary() async throws -> String {
        let package = TestEnvironment.root.appendingPathComponent("Examples/TypedHandlers").path
        let binary = package + "/.build/debug/OrdersWorker"
        if !FileManager.default.isExecutableFile(atPath: binary) {
            let build = try ChildProcess("/usr/bin/env", ["swift", "build", "--package-path", package])
            #expect(try await build.exit(within: 540) == .exited(0), "\(build.output)")
        }
        return binary
    }
}
