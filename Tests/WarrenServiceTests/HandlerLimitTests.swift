import Foundation
import Logging
import Testing
import Warren
@testable import WarrenAMQP
@testable import WarrenService

/// A handler's own `concurrency:` from a handlers file, run by `warren serve`'s worker on RabbitMQ:
/// it never adds room to `worker.concurrency`, and the highest priority is served first. (The
/// service once ran such a handler in a group of its own: with a limit of 1 and a handler limit of
/// 4, three jobs ran at once, in arrival order.)
@Suite("Handler limits from a handlers file")
struct HandlerLimitTests {
    @Test(.timeLimit(.minutes(4)))
    func aHandlersLimitStaysWithinTheWorkersAndPriorityOrderHolds() async throws {
        try await usingBroker {
            let order = Locked<[String]>([])
            let service = try await FakeService { call in
                if let object = try? JSONSerialization.jsonObject(with: call.body) as? [String: String], let tag = object["tag"] {
                    order.withLock { $0.append(tag) }
                }
                try? await Task.sleep(for: .milliseconds(150))
                return (200, "{}")
            }
            let queue = TestEnvironment.unique()
            let handlers = try HandlersFile.parse("""
                handlers:
                  limited.wide:
                    http: { url: "\(service.url)/wide" }
                    concurrency: 4
                  limited.other:
                    http: { url: "\(service.url)/other" }
                    concurrency: 2
                """, file: "handlers.yaml", environment: [:])
            var sources = ServiceConfiguration.Sources()
            sources.environment = [
                "WARREN_BROKER_URL": try TestEnvironment.amqpURL, "WARREN_QUEUE_NAME": queue, "WARREN_WORKER_CONCURRENCY": "1",
                "WARREN_HTTP_ADDRESS": "off",
            ]
            sources.secretsDirectory = "/nonexistent"
            let configuration = try await ServiceConfiguration.load(sources)
            var logger = Logger(label: "test")
            logger.logLevel = .error
            let worker = try WorkerService(configuration: configuration, handlers: handlers, logger: logger)
            // Queued before the worker starts: it sees all of them at once. Its connection has
            // declared the queues (the tools declare nothing).
            try await worker.broker.waitUntilReady()
            let tools = AMQPTools(url: configuration.brokerURL, queue: queue)
            let jobs: [(String, String, JobPriority)] = [
                ("limited.wide", "wide-low", .low), ("limited.other", "other-normal", .normal),
                ("limited.wide", "wide-high", .high), ("limited.wide", "wide-background", .background),
                ("limited.other", "other-critical", .critical),
            ]
            for (name, tag, priority) in jobs {
                let job = Job(name: name, payload: Data(#"{"tag":"\#(tag)"}"#.utf8), priority: priority)
                _ = try await tools.submit(job)
            }
            let running = Task { await worker.runWorker() }
            try await waitUntil("every job to be called", within: 30) { order.withLock { $0.count } == jobs.count }
            running.cancel()
            await running.value
            #expect(service.mostAtOnce == 1, "\(service.mostAtOnce) calls at once with worker.concurrency 1")
            #expect(order.withLock { $0 } == ["other-critical", "wide-high", "other-normal", "wide-low", "wide-background"])
            let raw = try RawConnection(url: configuration.brokerURL)
            try TestBrokerQueues.delete(queue, on: raw)
            raw.close()
        }
    }
}
