#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
@_spi(Transport) import Warren

/// What the AMQP broker knows of its link to RabbitMQ and of its consumers, under one lock.
struct LinkState {
    /// Asked for work: the consumers run (and start again after each reconnection).
    var consuming = false
    /// A graceful stop has begun: what arrives now goes back to RabbitMQ.
    var handingBack = false
    /// The node connected to (or last connected to).
    var serverVersion = BrokerVersion(major: 0, minor: 0, patch: 0)
    /// What the last topology declaration found and accepted.
    var topologyNotes: [String] = []
}

/// Settles messages: each job that leaves the local engine has its message acked, or first a
/// retry, a reply, a dead letter or a delay published (confirmed) and then acked; unstarted jobs
/// go back to RabbitMQ. Lifecycle events go out from here too.
final class Settlement: Sendable {
    let configuration: AMQPBroker.Configuration
    let topology: Topology
    let connection: AMQPConnection
    let deliveries: Deliveries
    let link: Locked<LinkState>
    /// Settlements in progress (publishes awaiting confirms, records awaiting the store).
    let settling = Latch()
    /// The job-state store, when there is one: how each job ended is recorded there before its
    /// message is acked, so a copy that arrives anywhere later is known as a duplicate.
    let store: StoreLink?

    init(
        configuration: AMQPBroker.Configuration, topology: Topology, connection: AMQPConnection, deliveries: Deliveries,
        link: Locked<LinkState>, store: StoreLink?
    ) {
        self.store = store
        self.configuration = configuration
        self.topology = topology
        self.connection = connection
        self.deliveries = deliveries
        self.link = link
    }

    /// Settles the messages of jobs that left the local engine (with a store, once it has recorded them).
    func settle(_ departures: [Departure]) {
        guard let store else {
            settleMessages(departures)
            return
        }
        let changes = departures.map { departure -> (id: JobID, change: JobChange) in
            switch departure {
            case let .completed(job): (job.id, .completed(result: Array(job.result ?? Data())))
            case let .cancelled(job): (job.id, .cancelled)
            case let .retry(job): (job.id, .retrying(attempt: job.attempt, error: job.errors.last?.message ?? "failed"))
            case let .deadLettered(job): (job.id, .deadLettered(job.deadLetterReason ?? .malformedMessage("unknown")))
            }
        }
        settling.add()
        let settling = self.settling
        store.write(changes) { [self] in
            settleMessages(departures)
            settling.countDown()
        }
    }

    private func settleMessages(_ departures: [Departure]) {
        for departure in departures {
            guard let origins = deliveries.take(departure.id) else { continue }
            if configuration.publishesEvents {
                switch departure {
                case let .completed(job): announce(.completed, job)
                case let .cancelled(job): announce(.cancelled, job)
                case let .retry(job): announce(.retrying, job)
                case let .deadLettered(job): announce(.deadLettered, job)
                }
            }
            switch departure {
            case let .completed(job):
                if let replyTo = job.metadata[WireFormat.replyToKey] {
                    let reply = OutgoingMessage(
                        exchange: "", routingKey: replyTo,
                        properties: MessageProperties(
                            contentType: "application/json", headers: ["x-warren-status": .string("completed")],
                            correlationID: job.metadata[WireFormat.correlationIDKey], messageID: job.id.rawValue, type: job.name),
                        body: Array(job.result ?? Data()))
                    // The job is done either way; a reply that cannot be delivered is not a reason to run it again.
                    settleAfter({ try? await $0.publish(reply, deadline: self.configuration.publishDeadline) }, origins: origins)
                } else {
                    ack(origins)
                }
            case .cancelled:
                ack(origins)
            case let .retry(job):
                settleAfter({ connection throws(AMQPError) in try await self.publish(job, on: connection) }, origins: origins)
            case let .deadLettered(job):
                // The attempt that ended counts when it ran (failed, rejected, no handler); a job
                // dead-lettered before it started (deadline, dependency) made only the earlier ones.
                deadLetter(properties: origins.first.properties, body: Array(job.payload), reason: job.deadLetterReason ?? .malformedMessage("unknown"),
                           errors: job.errors, attempts: job.startedAt == nil ? job.attempt - 1 : job.attempt, origins: origins)
            }
        }
    }

    /// Publishes a lifecycle event, when configured (at most once: nobody waits for its confirm).
    func announce(_ event: WireFormat.Event, _ job: Job, reason: DeadLetterReason? = nil) {
        guard configuration.publishesEvents else { return }
        connection.notify(WireFormat.event(event, job: job, queue: configuration.queue, reason: reason ?? job.deadLetterReason))
    }

    /// Whether returning a message to its queue counts toward the queue's delivery limit: on
    /// quorum queues before RabbitMQ 4.3 every return does, a nack with requeue included.
    private var returnsCount: Bool {
        topology.queueType == .quorum && link.withLock { $0.serverVersion.quorumCountsNack }
    }

    /// Puts a message that did not run back in its queue. A nack with requeue returns it to the
    /// head of its queue. Where that counts as a failed delivery, every graceful restart would
    /// wear the count down until jobs that never failed were dead-lettered (32 to 38 of 50 jobs
    /// vanished in 25 restarts before the queues had a dead-letter exchange): there a copy goes
    /// to the end of its priority queue (confirmed), then the original is acked. Deliveries of a
    /// channel that is gone are back in their queue already.
    func giveBack(_ origins: Origins, priority: JobPriority, body: [UInt8]) {
        let connection = self.connection
        guard returnsCount else {
            origins.forEach { connection.giveBack($0.tag, generation: $0.generation) }
            return
        }
        guard case let .connected(generation) = connection.status else { return }
        var live: [Origin] = []
        origins.forEach { if $0.generation == generation { live.append($0) } }
        guard let first = live.first else { return }
        var properties = first.properties
        properties.headers = properties.headers.filter { !WireFormat.brokerDeathHeaders.contains($0.key) }
        let copy = topology.message(to: priority, notBefore: nil, properties: properties, body: body)
        settleAfter({ connection throws(AMQPError) in try await connection.publish(copy, deadline: .seconds(5)) },
                    origins: Origins(first: first, duplicates: Array(live.dropFirst())))
    }

    func ack(_ origins: Origins) {
        origins.forEach { connection.ack($0.tag, generation: $0.generation) }
    }

    /// Publishes the dead letter (confirmed), answers the message's `reply_to` if it has one, then
    /// acks the origins.
    func deadLetter(
        properties: MessageProperties, body: [UInt8], reason: DeadLetterReason, errors: [AttemptError], attempts: Int, origins: Origins
    ) {
        let (deadProperties, deadBody) = WireFormat.deadLetter(
            properties: properties, body: body, reason: reason, errors: errors, attempts: attempts,
            exchange: origins.first.exchange, routingKey: origins.first.routingKey)
        let replyTo = properties.replyTo.flatMap { $0.isEmpty ? nil : $0 }, correlationID = properties.correlationID
        let message = OutgoingMessage(
            exchange: Topology.deadExchange, routingKey: topology.deadRoutingKey, properties: deadProperties, body: deadBody, mandatory: true)
        settleAfter({ connection throws(AMQPError) in
            try await connection.publish(message, deadline: self.configuration.publishDeadline)
            if let replyTo {
                // The producer waits for an answer: tell it the job failed.
                let failure = OutgoingMessage(
                    exchange: "", routingKey: replyTo,
                    properties: MessageProperties(
                        contentType: "application/json",
                        headers: ["x-warren-status": .string("dead_lettered"), WireFormat.Header.deadReason: .string(reason.code)],
                        correlationID: correlationID, messageID: properties.messageID),
                    body: Array((try? JSONEncoder().encode(["error": reason.description])) ?? Data()))
                try? await connection.publish(failure, deadline: .seconds(5))
            }
        }, origins: origins)
    }

    /// Sends a message that asked for `x-warren-delay` through the delay cascade to the priority
    /// queue it arrived in, without that header (confirmed), then acks it.
    func delay(_ message: IncomingMessage, generation: UInt64, until notBefore: Date, priority: JobPriority) {
        var properties = message.properties
        properties.headers[WireFormat.Header.delay] = nil
        let copy = topology.message(to: priority, notBefore: notBefore, properties: properties, body: message.body)
        settleAfter({ connection throws(AMQPError) in try await connection.publish(copy, deadline: self.configuration.publishDeadline) },
                    origins: Origins(first: Origin(message, generation: generation)))
    }

    /// Runs `publish` (confirmed), then acks the origins; if it fails they go back to their queue.
    private func settleAfter(_ publish: @escaping @Sendable (AMQPConnection) async throws(AMQPError) -> Void, origins: Origins) {
        let connection = self.connection, settling = self.settling
        settling.add()
        Task {
            do throws(AMQPError) {
                try await publish(connection)
                origins.forEach { connection.ack($0.tag, generation: $0.generation) }
            } catch {
                // Not acked: the message returns (now, or when its channel is gone) and is settled again.
                origins.forEach { connection.giveBack($0.tag, generation: $0.generation) }
            }
            settling.countDown()
        }
    }

    /// Publishes a job to its priority queue, through the delay cascade when it is not due yet.
    func publish(_ job: Job, on connection: AMQPConnection? = nil) async throws(AMQPError) {
        let (properties, body) = WireFormat.encode(job)
        let message = topology.message(to: job.priority, notBefore: job.notBefore, properties: properties, body: body)
        try await (connection ?? self.connection).publish(message, deadline: configuration.publishDeadline)
    }
}
