public import Instrumentation
import Synchronization
public import Tracing
public import W3CTraceContext

/// A swift-distributed-tracing tracer that follows W3C Trace Context: a span continues the trace
/// of the context it starts in (a job's producer's `traceparent`, extracted from the job's
/// metadata) or starts a new trace, and `inject` writes the current span as `traceparent` (and
/// `tracestate`) into outgoing calls. It exports nothing: `onEnd` sees each finished span. To send
/// spans somewhere, bootstrap an exporting tracer (swift-otel's) instead; Warren's spans and
/// propagation go through whichever tracer the process bootstrapped.
public struct TraceContextTracer: Tracer {
    public typealias Span = TraceContextSpan

    private let onEnd: @Sendable (TraceContextSpan.Finished) -> Void

    public init(onEnd: @escaping @Sendable (TraceContextSpan.Finished) -> Void = { _ in }) {
        self.onEnd = onEnd
    }

    public func startSpan<Instant: TracerInstant>(
        _ operationName: String, context: @autoclosure () -> InstrumentationContext, ofKind kind: SpanKind,
        at instant: @autoclosure () -> Instant, function: String, file fileID: String, line: UInt
    ) -> TraceContextSpan {
        var context = context()
        let parent = context.traceContext
        let own = TraceContext(
            traceID: parent?.traceID ?? .random(), spanID: .random(), flags: parent?.flags ?? .sampled, state: parent?.state ?? TraceState())
        context.traceContext = own
        return TraceContextSpan(
            operationName: operationName, context: context, parentSpanID: parent.map { "\($0.spanID)" }, kind: kind,
            startNanoseconds: instant().nanosecondsSinceEpoch, onEnd: onEnd)
    }

    public func forceFlush() {}

    public func extract<Carrier, Extract: Extractor>(_ carrier: Carrier, into context: inout InstrumentationContext, using extractor: Extract)
    where Extract.Carrier == Carrier {
        guard let parent = extractor.extract(key: "traceparent", from: carrier),
              let trace = try? TraceContext(traceParentHeaderValue: parent, traceStateHeaderValue: extractor.extract(key: "tracestate", from: carrier))
        else { return }
        context.traceContext = trace
    }

    public func inject<Carrier, Inject: Injector>(_ context: InstrumentationContext, into carrier: inout Carrier, using injector: Inject)
    where Inject.Carrier == Carrier {
        guard let trace = context.traceContext else { return }
        injector.inject(trace.traceParentHeaderValue, forKey: "traceparent", into: &carrier)
        if let state = trace.traceStateHeaderValue { injector.inject(state, forKey: "tracestate", into: &carrier) }
    }
}

/// A span of `TraceContextTracer`.
public struct TraceContextSpan: Tracing.Span {
    /// What a span was once it ended.
    public struct Finished: Sendable {
        public let operationName: String
        public let kind: SpanKind
        /// 32 and 16 lower-case hex digits, as in `traceparent`.
        public let traceID: String
        public let spanID: String
        /// The span it continues (the producer's, for a job's attempt); nil for a trace's first span.
        public let parentSpanID: String?
        public let attributes: SpanAttributes
        public let status: SpanStatus?
        public let errors: [String]
        public let startNanoseconds: UInt64
        public let endNanoseconds: UInt64
    }

    private struct State {
        var operationName: String
        var attributes: SpanAttributes = [:]
        var status: SpanStatus?
        var errors: [String] = []
        var ended = false
    }

    public let context: InstrumentationContext
    public let kind: SpanKind
    public let parentSpanID: String?
    private let startNanoseconds: UInt64
    private let state: Locked<State>
    private let onEnd: @Sendable (Finished) -> Void

    init(
        operationName: String, context: InstrumentationContext, parentSpanID: String?, kind: SpanKind, startNanoseconds: UInt64,
        onEnd: @escaping @Sendable (Finished) -> Void
    ) {
        self.context = context
        self.kind = kind
        self.parentSpanID = parentSpanID
        self.startNanoseconds = startNanoseconds
        self.onEnd = onEnd
        state = Locked(State(operationName: operationName))
    }

    /// The W3C trace context of this span: its trace and its own span id.
    public var traceContext: TraceContext? { context.traceContext }

    public var operationName: String {
        get { state.withLock { $0.operationName } }
        nonmutating set { state.withLock { if !$0.ended { $0.operationName = newValue } } }
    }

    public var attributes: SpanAttributes {
        get { state.withLock { $0.attributes } }
        nonmutating set { state.withLock { if !$0.ended { $0.attributes = newValue } } }
    }

    public var isRecording: Bool { state.withLock { !$0.ended } }

    public func setStatus(_ status: SpanStatus) { state.withLock { if !$0.ended { $0.status = status } } }

    public func addEvent(_ event: SpanEvent) {}

    public func addLink(_ link: SpanLink) {}

    public func recordError<Instant: TracerInstant>(_ error: any Error, attributes: SpanAttributes, at instant: @autoclosure () -> Instant) {
        state.withLock { if !$0.ended { $0.errors.append("\(error)") } }
    }

    public func end<Instant: TracerInstant>(at instant: @autoclosure () -> Instant) {
        let ended = state.withLock { state -> State? in
            guard !state.ended else { return nil }
            state.ended = true
            return state
        }
        guard let ended, let trace = context.traceContext else { return }
        onEnd(Finished(
            operationName: ended.operationName, kind: kind, traceID: "\(trace.traceID)", spanID: "\(trace.spanID)", parentSpanID: parentSpanID,
            attributes: ended.attributes, status: ended.status, errors: ended.errors, startNanoseconds: startNanoseconds,
            endNanoseconds: instant().nanosecondsSinceEpoch))
    }
}

extension InstrumentationContext {
    /// The W3C trace context this context carries (`TraceContextTracer`'s).
    public var traceContext: TraceContext? {
        get { self[TraceContextKey.self] }
        set { self[TraceContextKey.self] = newValue }
    }
}

private enum TraceContextKey: InstrumentationContextKey {
    typealias Value = TraceContext
}
