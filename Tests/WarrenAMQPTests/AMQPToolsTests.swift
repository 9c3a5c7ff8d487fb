import Foundation
import Testing
import Warren
@testable import WarrenAMQP

/// `warren submit`, `queues` and `dead-letters` underneath: AMQPTools against the real broker.
@Suite("AMQP tools")
struct AMQPToolsTests {
    @Test(.timeLimit(.minutes(4)))
    func deadLettersAreListedWithoutLossReplayedAndPurged() async throws {
        try await usingBroker {
            let name = TestBroker.unique()
            let url = try TestBroker.url()
            let tools = AMQPTools(url: url, queue: name)
            let broker = AMQPBroker(.init(url: url, queue: name, prefetch: 20))
            try await broker.waitUntilReady(timeout: .seconds(20))
            let broken = Locked(true)
            let runs = Locked<[String: [Int]]>([:])
            var registry = HandlerRegistry()
            try registry.registerRaw("tools.flaky") { payload, context in
                runs.withLock { $0[context.id.rawValue, default: []].append(context.attempt) }
                if broken.withLock({ $0 }) { throw TimedOut(description: "the downstream service is down") }
                return payload
            }
            let pool = WorkerPool(broker: broker, registry: registry, configuration: WorkerPoolConfiguration(concurrency: 4))
            let service = Task { await broker.run(pool) }

            var flaky: [JobID] = []
            for n in 0..<3 {
                let job = Job(name: "tools.flaky", payload: Data(#"{"n":\#(n)}"#.utf8), priority: .high, maxRetries: 0)
                _ = try await tools.submit(job)
                flaky.append(job.id)
            }
            for _ in 0..<2 { _ = try await tools.submit(Job(name: "tools.nobody")) }
            try await waitUntil("five dead letters", within: 30) { (try? await tools.depths().last?.messages) == 5 }

            let all = try await tools.deadLetters()
            #expect(all.count == 5)
            #expect(try await tools.depths().last?.messages == 5, "listing removes nothing")
            #expect(try await tools.deadLetters(.init(reason: "unknown_job_name")).count == 2)
            let shown = try #require(try await tools.deadLetters(.init(id: flaky[1].rawValue)).first)
            #expect(shown.name == "tools.flaky" && shown.reason == "retries_exhausted" && shown.attempts == 1 && shown.priority == .high)
            #expect(shown.error.contains("the downstream service is down") && shown.body == Array(#"{"n":1}"#.utf8))
            #expect(shown.deadAt != nil && shown.originalRoutingKey == "\(name).high")

            let flakyIDs = flaky
            broken.withLock { $0 = false }
            #expect(try await tools.replay(.init(name: "tools.flaky")) == 3)
            try await waitUntil("the replayed jobs to run again", within: 30) {
                runs.withLock { runs in flakyIDs.allSatisfy { runs[$0.rawValue]?.count == 2 } }
            }
            #expect(runs.withLock { runs in flaky.allSatisfy { runs[$0.rawValue] == [1, 1] } }, "replayed with the attempt count reset")
            #expect(try await tools.depths().last?.messages == 2)
            #expect(try await tools.purge(.init(reason: "unknown_job_name")) == 2)
            #expect(try await tools.depths().last?.messages == 0)

            // Waiting for a result blocks its thread until the worker pool, in this process, has run the job.
            let answer = try await tools.submit(Job(name: "tools.flaky", payload: Data(#"{"n":42}"#.utf8)), wait: .seconds(20))
            #expect(answer == .completed(Data(#"{"n":42}"#.utf8)), "submit --wait gets the result through a reply queue")
            let unknown = try await tools.submit(Job(name: "tools.nobody"), wait: .seconds(20))
            guard case let .deadLettered(reason, _)? = unknown else { Issue.record("\(String(describing: unknown))"); return }
            #expect("\(reason)".contains("unknown_job_name"))
            let depths = try await tools.depths()
            #expect(depths.count == 6 && depths.prefix(5).allSatisfy { $0.consumers == 1 }, "\(depths)")

            service.cancel()
            await service.value
            _ = try await tools.purge(.init())
            try TestBroker.deleteQueues([name])
        }
    }
}
