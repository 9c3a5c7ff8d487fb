#if canImport(FoundationEssentials)
package import FoundationEssentials
#else
package import Foundation
#endif
package import Warren

/// What every instance on a queue knows about its jobs, kept in Redis (or Valkey; a single server
/// or a primary with replicas, not Redis Cluster: the scripts read keys they compute).
///
/// Keys, under `warren:<queue>:`:
/// - `job:<id>`: a hash (name, status, attempt, progress, instance, result, result_truncated,
///   error, cancel, created_at, started_at, finished_at, updated_at; times in epoch milliseconds),
///   expiring `retention` after its last write.
/// - `instance:<instance>`: an instance's lease, renewed while it lives; a job held by an instance
///   whose lease expired may be taken by another.
/// - channels `cancel` (a job id whose cancel was asked) and `done` (`<id> <status>` when a job ends).
///
/// Claims (dedup, cancel before arrival) are one script per burst, so that two instances never
/// both take a job; the other writes are pipelined.
package final class RedisJobStore: JobStateStore {
    package struct Configuration: Sendable {
        package var queue: String
        /// This process's name among the instances (unique: host and pid by default).
        package var instance: String
        /// How long an instance's lease lasts without renewal: after it, its jobs may run elsewhere.
        package var lease: Duration = .seconds(10)
        /// How long a job's record is kept after its last change.
        package var retention: Duration = .seconds(24 * 3600)
        /// Results longer than this are stored cut to it, with `result_truncated` set.
        package var resultLimit = 1 << 20

        package init(queue: String, instance: String) {
            (self.queue, self.instance) = (queue, instance)
        }
    }

    package let configuration: Configuration
    private let client: RedisClient
    private let prefix: String
    /// Subscribers by channel (cancel, done), each started with its first handler; handlers are
    /// called on the subscriber's thread with each message's text.
    private let watches = Locked<[String: (client: RedisClient, handlers: [@Sendable (String) -> Void])]>([:])

    package init(client: RedisClient, configuration: Configuration) {
        self.client = client
        self.configuration = configuration
        prefix = "warren:\(configuration.queue):"
    }

    package var instance: String { configuration.instance }

    /// Calls `handler` with the id of every job whose cancel is asked from now on, anywhere. A
    /// client of its own subscribes to the cancel channel (and again after each reconnection).
    package func watchCancels(_ handler: @escaping @Sendable (JobID) -> Void) {
        watch(cancelChannel, as: "cancels") { text in
            // An AMQP message id is a short string: at most 255 bytes.
            guard !text.isEmpty, text.utf8.count <= 255 else { return }
            handler(JobID(text))
        }
    }

    /// Calls `handler` with each job that ends from now on, anywhere, and how (at most once each:
    /// pub/sub, so a caller that must not miss one reads the records too).
    package func watchEndings(_ handler: @escaping @Sendable (JobID, JobStatus) -> Void) {
        watch(doneChannel, as: "endings") { text in
            for (id, status) in Self.endings(in: text) { handler(id, status) }
        }
    }

    /// The endings a done-channel message names: a line `<id> <status>` each.
    static func endings(in text: String) -> [(JobID, JobStatus)] {
        text.split(separator: "\n").compactMap { line in
            guard let space = line.lastIndex(of: " "), line.utf8.count <= 300,
                  let status = JobStatus(rawValue: String(line[line.index(after: space)...])), status.isTerminal else { return nil }
            return (JobID(String(line[..<space])), status)
        }
    }

    private func watch(_ channel: String, as role: String, _ handler: @escaping @Sendable (String) -> Void) {
        let url = client.url, name = "\(configuration.instance)-\(role)", registry = watches
        registry.withLock { watches in
            if watches[channel] != nil {
                watches[channel]?.handlers.append(handler)
                return
            }
            let subscriber = RedisClient(url: url, name: name, subscribingTo: [channel]) { channel, message in
                guard let text = String(validating: message, as: UTF8.self) else { return }
                for handler in registry.withLock({ $0[channel]?.handlers ?? [] }) { handler(text) }
            }
            watches[channel] = (subscriber, [handler])
        }
    }

    /// Whether a cancel was asked for each of `ids`, in order, pipelined.
    package func cancelRequested(_ ids: [JobID]) async throws -> [Bool] {
        guard !ids.isEmpty else { return [] }
        let replies = try await client.pipeline(ids.map { RedisCommand("HGET", jobKey($0), "cancel") })
        return replies.map { $0.text == "1" }
    }

    /// The statuses of `ids`, in order (nil: no record), pipelined.
    package func statuses(_ ids: [JobID]) async throws -> [JobStatus?] {
        guard !ids.isEmpty else { return [] }
        let replies = try await client.pipeline(ids.map { RedisCommand("HGET", jobKey($0), "status") })
        return replies.map { $0.text.flatMap(JobStatus.init(rawValue:)) }
    }

    /// Waits until the job ends, or `timeout` passes: its record then (nil if it has none). A
    /// subscriber on the done channel wakes the wait at once; the record is read again every
    /// second too, so an ending announced while the subscriber (re)connected is not missed.
    package func waitUntilEnded(_ id: JobID, within timeout: Duration) async throws -> StoredJob? {
        let ended = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let subscriber = RedisClient(url: client.url, name: "\(configuration.instance)-wait", subscribingTo: [doneChannel]) { _, message in
            let text = String(decoding: message, as: UTF8.self)
            if Self.endings(in: text).contains(where: { $0.0 == id }) { ended.continuation.yield() }
        }
        defer { Task { await subscriber.close() } }
        try? await subscriber.waitUntilConnected(within: .seconds(2))
        let deadline = ContinuousClock.now + timeout
        let ticker = Task {
            while !Task.isCancelled, ContinuousClock.now < deadline {
                try? await Task.sleep(for: min(.seconds(1), max(.zero, deadline - .now)))
                ended.continuation.yield()
            }
            ended.continuation.finish()
        }
        defer { ticker.cancel() }
        var record = try await record(of: id)
        if record?.status?.isTerminal == true { return record }
        for await _ in ended.stream {
            record = try await self.record(of: id)
            if record?.status?.isTerminal == true || ContinuousClock.now >= deadline { return record }
        }
        return record
    }

    /// Stops the subscribers, if any run (the command client is the caller's to close).
    package func close() async {
        let subscribers = watches.withLock { watches in
            defer { watches = [:] }
            return watches.values.map(\.client)
        }
        for subscriber in subscribers { await subscriber.close() }
    }

    package var cancelChannel: String { prefix + "cancel" }
    package var doneChannel: String { prefix + "done" }
    private func jobKey(_ id: JobID) -> String { prefix + "job:" + id.rawValue }
    private var leaseKey: String { prefix + "instance:" + configuration.instance }
    private var retentionMillis: Int64 { max(1, configuration.retention.wholeMilliseconds) }
    private static func millis(_ date: Date) -> Int64 { Int64((date.timeIntervalSince1970 * 1_000).rounded()) }

    /// Renews (or takes) this instance's lease.
    package func renewLease() async throws {
        try await client.command(RedisCommand("SET", leaseKey, "\(ProcessInfo.processInfo.processIdentifier)", "PX", max(1, configuration.lease.wholeMilliseconds)))
    }

    /// Gives the lease up (a clean stop): jobs it still held may run elsewhere at once.
    package func releaseLease() async throws {
        try await client.command(RedisCommand("DEL", leaseKey))
    }

    /// Claims arriving jobs for this instance, all in one script: each is claimed unless it ended
    /// already, a cancel was asked for it, or another live instance holds the same attempt.
    package func claim(_ jobs: [StoreClaimRequest]) async throws -> [StoreClaim] { try await claim(jobs, now: Date()) }

    package func claim(_ jobs: [StoreClaimRequest], now: Date) async throws(RedisError) -> [StoreClaim] {
        guard !jobs.isEmpty else { return [] }
        var arguments: [any RedisArgument] = [Self.claimScript, jobs.count]
        arguments += jobs.map { jobKey($0.id) }
        arguments += [
            configuration.instance, Self.millis(now), prefix + "instance:", retentionMillis, doneChannel, (prefix + "job:").utf8.count + 1,
            max(1, configuration.lease.wholeMilliseconds),
        ]
        for job in jobs { arguments += [job.name, job.attempt, job.replayed ? 1 : 0, job.priority.name] }
        let reply = try await client.command(RedisCommand("EVAL", arguments: arguments))
        guard case let .array(answers) = reply, answers.count == jobs.count else {
            throw .reply("unexpected answer to the claim script: \(reply)")
        }
        return answers.map { answer in
            let text = answer.text ?? ""
            if text == "claimed" { return .claimed }
            if text == "cancelled" { return .cancelled }
            if text.hasPrefix("finished:"), let status = JobStatus(rawValue: String(text.dropFirst(9))) { return .finished(status) }
            if text.hasPrefix("held:") { return .heldElsewhere(instance: String(text.dropFirst(5))) }
            return .claimed
        }
    }

    /// Records changes, pipelined; a job that ended is announced on the `done` channel.
    package func record(_ changes: [(id: JobID, change: JobChange)]) async throws { try await record(changes, now: Date()) }

    package func record(_ changes: [(id: JobID, change: JobChange)], now: Date) async throws(RedisError) {
        guard !changes.isEmpty else { return }
        let at = Self.millis(now)
        var commands: [RedisCommand] = []
        // A job that starts and ends within one batch (most short jobs) is written once, its
        // ending saying when it started: a write a job, not two.
        let ending = Set(changes.lazy.filter { $0.change.ending != nil }.map(\.id))
        var startedHere = Set<JobID>()
        var endings: [String] = []
        for (id, change) in changes {
            if ending.contains(id), change.ending == nil {
                if case .started = change { startedHere.insert(id) }
                continue
            }
            let key = jobKey(id)
            var fields: [any RedisArgument] = ["updated_at", at, "instance", configuration.instance]
            if startedHere.remove(id) != nil { fields += ["started_at", at] }
            var ended: JobStatus?
            switch change {
            case let .started(attempt):
                fields += ["status", JobStatus.running.rawValue, "attempt", attempt, "started_at", at]
            case let .progress(value):
                fields += ["progress", "\(min(100, max(0, value.isFinite ? value : 0)))"]
            case let .retrying(attempt, error):
                fields += ["status", JobStatus.retrying.rawValue, "attempt", attempt, "error", error]
            case let .completed(result):
                let truncated = result.count > configuration.resultLimit
                // An earlier attempt's error no longer says anything about it.
                fields += ["status", JobStatus.completed.rawValue, "error", "", "result", Self.cut(result, to: configuration.resultLimit),
                           "result_truncated", truncated ? 1 : 0, "finished_at", at, "progress", "100"]
                ended = .completed
            case let .deadLettered(reason):
                fields += [
                    "status", JobStatus.deadLettered.rawValue, "error", reason.description, "reason", reason.code, "reason_detail", reason.detail,
                    "finished_at", at,
                ]
                ended = .deadLettered
            case .cancelled:
                fields += ["status", JobStatus.cancelled.rawValue, "finished_at", at]
                ended = .cancelled
            }
            if let ended {
                commands.append(RedisCommand("HSET", arguments: [key] + fields))
                commands.append(RedisCommand("PEXPIRE", key, retentionMillis))
                // A line each: an id holding a line break is not announced (its record says it).
                if !id.rawValue.contains(where: \.isNewline) { endings.append("\(id.rawValue) \(ended.rawValue)") }
            } else {
                // Never over an ending: the events that say a job runs may come after it ended.
                commands.append(RedisCommand("EVAL", arguments: [Self.progressScript, 1, key, retentionMillis] + fields))
            }
        }
        // The batch's endings in one message, a line each.
        if !endings.isEmpty { commands.append(RedisCommand("PUBLISH", doneChannel, endings.joined(separator: "\n"))) }
        let replies = try await client.pipeline(commands)
        if let failure = replies.first(where: { if case .error = $0 { true } else { false } }), case let .error(text) = failure {
            throw .reply(text)
        }
    }

    /// The first `limit` bytes of `bytes`, less the start of a UTF-8 sequence the cut would split
    /// (a JSON result cut stays text).
    static func cut(_ bytes: [UInt8], to limit: Int) -> [UInt8] {
        guard bytes.count > limit else { return bytes }
        var end = max(0, limit)
        // Back over continuation bytes (10xxxxxx) to the start of the sequence the cut falls in.
        var back = end
        while back > 0, back > end - 4, bytes[back] & 0xC0 == 0x80 { back -= 1 }
        if back < end, bytes[back] & 0xC0 == 0xC0 { end = back }
        return Array(bytes[..<end])
    }

    /// Gives claimed jobs up, unstarted (handed back to the broker): another instance may take
    /// them at once, without waiting for this one's lease to run out.
    package func release(_ ids: [JobID]) async throws {
        guard !ids.isEmpty else { return }
        let at = Self.millis(Date())
        let commands = ids.map { id in
            RedisCommand("EVAL", arguments: [Self.releaseScript, 1, jobKey(id), configuration.instance, at] as [any RedisArgument])
        }
        let replies = try await client.pipeline(commands)
        if let failure = replies.first(where: { if case .error = $0 { true } else { false } }), case let .error(text) = failure {
            throw RedisError.reply(text)
        }
    }

    /// Asks for a job to be cancelled, wherever it is or will be.
    package func requestCancel(_ id: JobID) async throws -> StoreCancelOutcome { try await requestCancel(id, now: Date()) }

    package func requestCancel(_ id: JobID, now: Date) async throws(RedisError) -> StoreCancelOutcome {
        let reply = try await client.command(RedisCommand(
            "EVAL", Self.cancelScript, 1, jobKey(id), Self.millis(now), retentionMillis, cancelChannel, id.rawValue))
        let text = reply.text ?? ""
        if text.hasPrefix("finished:"), let status = JobStatus(rawValue: String(text.dropFirst(9))) { return .finished(status) }
        let parts = text.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
        let status = parts.count > 1 ? JobStatus(rawValue: String(parts[1])) : nil
        let instance = parts.count > 2 && !parts[2].isEmpty ? String(parts[2]) : nil
        return .requested(status: status, instance: instance)
    }

    /// The job's record, or nil when the store has none (never seen, or past its retention).
    package func job(_ id: JobID) async throws -> StoredJob? { try await record(of: id) }

    package func record(of id: JobID) async throws(RedisError) -> StoredJob? {
        let reply = try await client.command(RedisCommand("HGETALL", jobKey(id)))
        guard case let .array(items) = reply, !items.isEmpty else { return nil }
        var fields: [String: RedisValue] = [:]
        for index in stride(from: 0, to: items.count - 1, by: 2) {
            if let name = items[index].text { fields[name] = items[index + 1] }
        }
        func date(_ name: String) -> Date? {
            guard let millis = fields[name]?.integer, (0...253_402_300_799_000).contains(millis) else { return nil }
            return Date(timeIntervalSince1970: Double(millis) / 1_000)
        }
        var result: [UInt8]?
        if case let .bulk(bytes)? = fields["result"] { result = bytes }
        let attempt = fields["attempt"]?.integer.flatMap { (0...1_000_000).contains($0) ? Int($0) : nil } ?? 0
        let progress = fields["progress"]?.text.flatMap(Double.init).flatMap { $0.isFinite ? min(100, max(0, $0)) : nil } ?? 0
        return StoredJob(
            id: id, name: fields["name"]?.text, priority: fields["priority"]?.text.flatMap(JobPriority.init(name:)), status: fields["status"]?.text.flatMap(JobStatus.init(rawValue:)), attempt: attempt,
            progress: progress, instance: fields["instance"]?.text, result: result, resultTruncated: fields["result_truncated"]?.text == "1",
            error: fields["error"]?.text.flatMap { $0.isEmpty ? nil : $0 },
            deadLetterReason: fields["reason"]?.text.flatMap { code in DeadLetterReason(code: code, detail: fields["reason_detail"]?.text ?? "") }, cancelRequested: fields["cancel"]?.text == "1", createdAt: date("created_at"),
            startedAt: date("started_at"), finishedAt: date("finished_at"))
    }

    // MARK: Scripts

    /// KEYS: the jobs' keys. ARGV: instance, now (ms), lease key prefix, retention (ms), the done
    /// channel, where the id starts in a job's key (1-based), the lease (ms; renewed here, so that
    /// no claim is ever held under a lease that does not exist), then a name, an attempt, a replayed
    /// flag (1: run it even if it ended) and a priority per job. A job is claimed unless it ended, a cancel was
    /// asked before it ran, or another instance with a live lease holds the same (or a later) attempt.
    static let claimScript = """
        local instance, now, leases, retention = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
        local done, prefix = ARGV[5], tonumber(ARGV[6])
        redis.call('SET', leases .. instance, '1', 'PX', ARGV[7])
        local answers = {}
        for i, key in ipairs(KEYS) do
          local name, attempt, replayed, priority = ARGV[4 + 4 * i], tonumber(ARGV[5 + 4 * i]), ARGV[6 + 4 * i] == '1', ARGV[7 + 4 * i]
          local s = redis.call('HMGET', key, 'status', 'instance', 'cancel', 'attempt')
          local status, holder, cancel, held = s[1], s[2], s[3], tonumber(s[4]) or 0
          local alive = holder and holder ~= '' and holder ~= instance and redis.call('EXISTS', leases .. holder) == 1
          local ended = status == 'completed' or status == 'dead_lettered' or status == 'cancelled'
          if replayed and ended and not (alive and held >= attempt) then
            redis.call('HDEL', key, 'cancel', 'result', 'result_truncated', 'error', 'finished_at', 'started_at')
            status, cancel, ended = nil, nil, false
          end
          if ended then
            answers[i] = 'finished:' .. status
          elseif cancel == '1' then
            if status == 'running' and alive then
              answers[i] = 'held:' .. holder
            else
              redis.call('HSET', key, 'status', 'cancelled', 'finished_at', now, 'updated_at', now, 'instance', instance,
                'name', name, 'priority', priority, 'attempt', attempt)
              redis.call('PEXPIRE', key, retention)
              redis.call('PUBLISH', done, string.sub(key, prefix) .. ' cancelled')
              answers[i] = 'cancelled'
            end
          elseif alive and status ~= 'retrying' and held >= attempt then
            answers[i] = 'held:' .. holder
          else
            redis.call('HSET', key, 'status', 'queued', 'instance', instance, 'name', name, 'priority', priority, 'attempt', attempt, 'updated_at', now)
            redis.call('HSETNX', key, 'created_at', now)
            redis.call('PEXPIRE', key, retention)
            answers[i] = 'claimed'
          end
        end
        return answers
        """

    /// KEYS: the job's key. ARGV: retention (ms), then field-value pairs, written unless the job ended.
    static let progressScript = """
        local status = redis.call('HGET', KEYS[1], 'status')
        if status == 'completed' or status == 'dead_lettered' or status == 'cancelled' then return 0 end
        redis.call('HSET', KEYS[1], unpack(ARGV, 2))
        redis.call('PEXPIRE', KEYS[1], ARGV[1])
        return 1
        """

    /// KEYS: the job's key. ARGV: instance, now (ms). Back to queued and held by nobody, when this
    /// instance holds it and it has not ended.
    static let releaseScript = """
        local s = redis.call('HMGET', KEYS[1], 'status', 'instance')
        if s[2] ~= ARGV[1] or s[1] == 'completed' or s[1] == 'dead_lettered' or s[1] == 'cancelled' then return 0 end
        redis.call('HSET', KEYS[1], 'status', 'queued', 'instance', '', 'updated_at', ARGV[2])
        return 1
        """

    /// KEYS: the job's key. ARGV: now (ms), retention (ms), the cancel channel, the job id.
    static let cancelScript = """
        local s = redis.call('HMGET', KEYS[1], 'status', 'instance')
        local status, holder = s[1], s[2]
        if status == 'completed' or status == 'dead_lettered' or status == 'cancelled' then
          return 'finished:' .. status
        end
        redis.call('HSET', KEYS[1], 'cancel', '1', 'updated_at', ARGV[1])
        redis.call('HSETNX', KEYS[1], 'created_at', ARGV[1])
        redis.call('PEXPIRE', KEYS[1], ARGV[2])
        redis.call('PUBLISH', ARGV[3], ARGV[4])
        return 'requested:' .. (status or '') .. ':' .. (holder or '')
        """
}
