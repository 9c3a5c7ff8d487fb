import Foundation
import Instrumentation
import Synchronization
import Testing
import Tracing
import Warren

/// A span per attempt through swift-distributed-tracing, continuing the producer's W3C trace.
@Suite("tracing")
struct TracingTests {
    struct Flaky: Error {}

    @Test(.timeLimit(.minutes(1)))
    func eachAttemptIsASpanParentedToTheProducersTraceparent() async throws {
        let spans = Mutex<[TraceContextSpan.Finished]>([])
        let seen = Mutex<[String: String]>([:])
        var registry = HandlerRegistry()
        try registry.registerRaw("flaky") { _, context in
            var carrier: [String: String] = [:]
            context.injectTraceContext(into: &carrier, using: DictionaryInjector())
            seen.withLock { $0["\(context.id) \(context.attempt)"] = carrier["traceparent"] }
            if context.attempt == 1 { throw Flaky() }
            return Data()
        }
        var configuration = WorkerPoolConfiguration(concurrency: 2)
        configuration.tracer = TraceContextTracer { span in spans.withLock { $0.append(span) } }
        let broker = InMemoryBroker(configuration: QueueConfiguration(retryPolicy: .immediate))
        let pool = WorkerPool(broker: broker, registry: registry, configuration: configuration)
        let running = Task { await pool.run() }
        var traced = Job(id: "traced", name: "flaky", maxRetries: 1)
        traced.metadata["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        try await broker.enqueue([traced, Job(id: "untraced", name: "flaky", maxRetries: 1)])
        #expect(await broker.outcome(of: "traced") == .completed(Data()))
        #expect(await broker.outcome(of: "untraced") == .completed(Data()))
        pool.shutdown()
        await running.value

        let all = spans.withLock { $0 }
        let ofTraced = all.filter { $0.attributes["warren.job.id"]?.toSpanAttribute() == "traced" }
            .sorted { ($0.startNanoseconds, $0.spanID) < ($1.startNanoseconds, $1.spanID) }
        #expect(all.count == 4 && ofTraced.count == 2, "one span per attempt: \(all.map(\.operationName))")
        for (index, span) in ofTraced.enumerated() {
            #expect(span.operationName == "flaky" && span.kind == .consumer)
            #expect(span.traceID == "4bf92f3577b34da6a3ce929d0e0e4736" && span.parentSpanID == "00f067aa0ba902b7", "\(span)")
            #expect(span.attributes["warren.job.attempt"]?.toSpanAttribute() == .int64(Int64(index + 1)))
            // What the handler passed on is this attempt's span, in the producer's trace.
            #expect(seen.withLock { $0["traced \(index + 1)"] } == "00-4bf92f3577b34da6a3ce929d0e0e4736-\(span.spanID)-01")
        }
        #expect(Set(ofTraced.map(\.spanID)).count == 2)
        #expect(ofTraced.first?.status?.code == .error && ofTraced.first?.attributes["warren.job.outcome"]?.toSpanAttribute() == "failed")
        #expect(ofTraced.last?.status == nil && ofTraced.last?.attributes["warren.job.outcome"]?.toSpanAttribute() == "completed")

        let ofUntraced = all.filter { $0.attributes["warren.job.id"]?.toSpanAttribute() == "untraced" }
        #expect(ofUntraced.count == 2 && ofUntraced.allSatisfy { $0.parentSpanID == nil && $0.traceID.count == 32 })
        #expect(Set(ofUntraced.map(\.traceID)).count == 2, "without a producer's trace each attempt starts one")
    }

    /// Without a tracer (none given, none bootstrapped) handlers pass nothing on.
    @Test func withoutATracerNothingIsInjected() async throws {
        var registry = HandlerRegistry()
        let seen = Mutex<[String: String]?>(nil)
        try registry.registerRaw("x") { _, context in
            var carrier: [String: String] = [:]
            context.injectTraceContext(into: &carrier, using: DictionaryInjector())
            seen.withLock { $0 = carrier }
            return Data()
        }
        let broker = InMemoryBroker()
        let pool = WorkerPool(broker: broker, registry: registry)
        let running = Task { await pool.run() }
        var job = Job(id: "x", name: "x")
        job.metadata["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        try await broker.enqueue([job])
        _ = await broker.outcome(of: "x")
        pool.shutdown()
        await running.value
        #expect(seen.withLock { $0 } == [:])
    }
}

struct DictionaryInjector: Injector {
    func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) { carrier[key] = value }
}
