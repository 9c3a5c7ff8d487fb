import Foundation
import Synchronization
import Testing
import Warren
@testable import WarrenRedis
import WarrenConformance
import WarrenTestSupport

/// The job-state store's rules, on the test Redis, with two or three stores standing for instances
/// of one queue.
@Suite("job-state store on Redis")
struct RedisJobStoreTests {
    /// Stores for `instances` on a queue of the test's own, sharing one client.
    static func stores(_ instances: [String], lease: Duration = .seconds(10), resultLimit: Int = 1 << 20) async throws
        -> (client: RedisClient, stores: [RedisJobStore])
    {
        let client = try await TestRedis.client("store")
        let queue = TestRedis.key("queue").replacingOccurrences(of: ":", with: "-")
        let stores = instances.map { instance in
            var configuration = RedisJobStore.Configuration(queue: queue, instance: instance)
            configuration.lease = lease
            configuration.resultLimit = resultLimit
            return RedisJobStore(client: client, configuration: configuration)
        }
        return (client, stores)
    }

    @Test(.timeLimit(.minutes(4)))
    func anIdRunsOnceWhileItsHolderLivesAndNeverAgainOnceEnded() async throws {
        try await ServerAccess.redis.using {
            let (client, stores) = try await Self.stores(["a", "b"])
            let (a, b) = (stores[0], stores[1])
            try await a.renewLease()
            try await b.renewLease()
            let id = JobID("job-1")
            #expect(try await a.claim([StoreClaimRequest(id: id, name: "email", attempt: 1)]) == [.claimed])
            #expect(try await b.claim([StoreClaimRequest(id: id, name: "email", attempt: 1)]) == [.heldElsewhere(instance: "a")])
            // Its own redelivered copy: the process's own dedup decides.
            #expect(try await a.claim([StoreClaimRequest(id: id, name: "email", attempt: 1)]) == [.claimed])
            try await a.record([(id, .started(attempt: 1))])
            #expect(try await b.claim([StoreClaimRequest(id: id, name: "email", attempt: 1)]) == [.heldElsewhere(instance: "a")])
            try await a.record([(id, .completed(result: Array(#"{"sent":true}"#.utf8)))])
            #expect(try await b.claim([StoreClaimRequest(id: id, name: "email", attempt: 1)]) == [.finished(.completed)])
            #expect(try await a.claim([StoreClaimRequest(id: id, name: "email", attempt: 1)]) == [.finished(.completed)])
            let record = try #require(try await b.job(id))
            #expect(record.status == .completed && record.instance == "a" && record.attempt == 1 && record.name == "email")
            #expect(record.result == Array(#"{"sent":true}"#.utf8) && !record.resultTruncated && record.progress == 100)
            #expect(record.createdAt != nil && record.startedAt != nil && record.finishedAt != nil)
            #expect(try await b.job(JobID("never-seen")) == nil)
            await client.close()
        }
    }

    /// A holder whose lease expired (its process died) no longer holds its jobs; a retry (the next
    /// attempt) may be taken by any instance. (The lease's expiry is Redis's: here its time to live
    /// is checked, and its end is the key's removal, so that a slow machine cannot fail the test.)
    @Test(.timeLimit(.minutes(4)))
    func aDeadHoldersJobsAndRetriesGoToOthers() async throws {
        try await ServerAccess.redis.using {
            let (client, stores) = try await Self.stores(["a", "b"], lease: .seconds(30))
            let (a, b) = (stores[0], stores[1])
            try await a.renewLease()
            let ttl = try await client.command(RedisCommand("PTTL", "warren:\(a.configuration.queue):instance:a")).integer ?? -1
            #expect(ttl > 0 && ttl <= 30_000, "a lease lives as long as configured: PTTL \(ttl)")
            let id = JobID("job-lease")
            #expect(try await a.claim([StoreClaimRequest(id: id, name: "report", attempt: 1)]) == [.claimed])
            try await a.record([(id, .started(attempt: 1))])
            #expect(try await b.claim([StoreClaimRequest(id: id, name: "report", attempt: 1)]) == [.heldElsewhere(instance: "a")])
            try await a.releaseLease()
            #expect(try await b.claim([StoreClaimRequest(id: id, name: "report", attempt: 1)]) == [.claimed])
            #expect(try await b.job(id)?.instance == "b")

            let retried = JobID("job-retry")
            try await a.renewLease()
            #expect(try await a.claim([StoreClaimRequest(id: retried, name: "report", attempt: 1)]) == [.claimed])
            try await a.record([(retried, .retrying(attempt: 1, error: "timeout"))])
            #expect(try await b.claim([StoreClaimRequest(id: retried, name: "report", attempt: 2)]) == [.claimed])
            await client.close()
        }
    }

    /// A cancel asked before a job arrives means it never runs; asked while it runs, the holder
    /// hears of it on the cancel channel and nobody else takes it meanwhile.
    @Test(.timeLimit(.minutes(4)))
    func cancelsReachQueuedRunningAndNotYetArrivedJobs() async throws {
        try await ServerAccess.redis.using {
            let (client, stores) = try await Self.stores(["a", "b"])
            let (a, b) = (stores[0], stores[1])
            try await a.renewLease()
            try await b.renewLease()
            let heard = Mutex<[String]>([])
            let subscriber = RedisClient(url: try TestRedis.url, name: "store-subscriber", subscribingTo: [a.cancelChannel, a.doneChannel]) {
                channel, message in heard.withLock { $0.append("\(channel == a.cancelChannel ? "cancel" : "done") \(String(decoding: message, as: UTF8.self))") }
            }
            try await subscriber.waitUntilConnected(within: .seconds(10))

            let early = JobID("not-yet-arrived")
            #expect(try await b.requestCancel(early) == .requested(status: nil, instance: nil))
            #expect(try await a.claim([StoreClaimRequest(id: early, name: "email", attempt: 1)]) == [.cancelled])
            #expect(try await a.job(early)?.status == .cancelled)
            #expect(try await b.requestCancel(early) == .finished(.cancelled))

            let running = JobID("running")
            #expect(try await a.claim([StoreClaimRequest(id: running, name: "email", attempt: 1)]) == [.claimed])
            try await a.record([(running, .started(attempt: 1))])
            #expect(try await b.requestCancel(running) == .requested(status: .running, instance: "a"))
            #expect(try await b.claim([StoreClaimRequest(id: running, name: "email", attempt: 1)]) == [.heldElsewhere(instance: "a")])
            try await a.record([(running, .cancelled)])
            #expect(try await b.claim([StoreClaimRequest(id: running, name: "email", attempt: 1)]) == [.finished(.cancelled)])

            try await waitUntil("the channels carried the cancels and the ends", within: 5) {
                let seen = heard.withLock { $0 }
                return ["cancel not-yet-arrived", "done not-yet-arrived cancelled", "cancel running", "done running cancelled"]
                    .allSatisfy(seen.contains)
            }
            await subscriber.close()
            await client.close()
        }
    }

    @Test(.timeLimit(.minutes(4)))
    func recordsProgressCapResultsAndExpire() async throws {
        try await ServerAccess.redis.using {
            let (client, stores) = try await Self.stores(["a"], resultLimit: 16)
            let a = stores[0]
            let id = JobID("big-result")
            #expect(try await a.claim([StoreClaimRequest(id: id, name: "export", attempt: 1)]) == [.claimed])
            try await a.record([(id, .started(attempt: 1)), (id, .progress(42.5))])
            #expect(try await a.job(id)?.progress == 42.5)
            #expect(try await a.job(id)?.status == .running)
            try await a.record([(id, .progress(.nan))])
            #expect(try await a.job(id)?.progress == 0, "a progress that is not a number is stored as 0")
            try await a.record([(id, .completed(result: Array(repeating: 0x41, count: 40)))])
            let record = try #require(try await a.job(id))
            #expect(record.result == Array(repeating: 0x41, count: 16) && record.resultTruncated)
            let ttl = try await client.command(RedisCommand("PTTL", "warren:\(a.configuration.queue):job:\(id.rawValue)")).integer ?? -1
            #expect(ttl > 0 && ttl <= 24 * 3_600_000, "the record expires after the retention: PTTL \(ttl)")
            let dead = JobID("dead")
            #expect(try await a.claim([StoreClaimRequest(id: dead, name: "export", attempt: 1)]) == [.claimed])
            try await a.record([(dead, .deadLettered(.retriesExhausted(attempts: 1, lastError: "boom")))])
            #expect(try await a.job(dead)?.status == .deadLettered)
            #expect(try await a.job(dead)?.error == "retries exhausted after 1 attempt(s); last error: boom")
            // A retried job that completes keeps no error from its failed attempt.
            let retried = JobID("retried-then-done")
            _ = try await a.claim([StoreClaimRequest(id: retried, name: "export", attempt: 1)])
            try await a.record([(retried, .retrying(attempt: 1, error: "first attempt failed"))])
            #expect(try await a.job(retried)?.error == "first attempt failed")
            try await a.record([(retried, .completed(result: [0x31]))])
            #expect(try await a.job(retried)?.error == nil)
            // A cut result stays UTF-8: the cut never splits a character.
            let accented = Array(("a" + String(repeating: "é", count: 20)).utf8)
            let cut = RedisJobStore.cut(accented, to: 16)
            #expect(cut.count == 15 && String(validating: cut, as: UTF8.self) != nil)
            #expect(RedisJobStore.cut(Array("abc".utf8), to: 2) == Array("ab".utf8) && RedisJobStore.cut([0xE2, 0x82, 0xAC], to: 2) == [])
            // Started and ended in one batch: one write, which says when it started.
            let quick = JobID("quick")
            _ = try await a.claim([StoreClaimRequest(id: quick, name: "export", attempt: 1)])
            try await a.record([(quick, .started(attempt: 1)), (quick, .progress(10)), (quick, .completed(result: [0x31]))])
            let quickRecord = try #require(try await a.job(quick))
            #expect(quickRecord.status == .completed && quickRecord.progress == 100 && quickRecord.result == [0x31])
            #expect(quickRecord.startedAt != nil && quickRecord.startedAt == quickRecord.finishedAt)
            // Every reason comes back as it was recorded, so a producer elsewhere sees what happened.
            let reasons: [DeadLetterReason] = [
                .retriesExhausted(attempts: 4, lastError: "timed out: 30 s"), .deadline(Date(timeIntervalSince1970: 1_700_000_000.25)),
                .dependencyFailed("parent 1", status: .cancelled), .unknownJobName("x y"), .undecodablePayload("bad"),
                .malformedMessage("m"), .noCapableWorker(required: ["gpu", "tpu"]), .rejected("no"),
            ]
            for (index, reason) in reasons.enumerated() {
                let id = JobID("dead-\(index)")
                _ = try await a.claim([StoreClaimRequest(id: id, name: "export", attempt: 1)])
                try await a.record([(id, .deadLettered(reason))])
                #expect(try await a.job(id)?.deadLetterReason == reason)
                #expect(try await a.job(id)?.outcome == .deadLettered(reason, errors: []))
            }
            await client.close()
        }
    }

    /// Seeded random histories (arrivals of copies on live instances, starts, ends, retries,
    /// instance deaths and births, cancels) checked against the rules after every step: a job
    /// ended never runs again, two live instances never both hold the same attempt, a cancel asked
    /// before a job runs means it never runs, and a dead instance's jobs go to the next to ask.
    @Test(.timeLimit(.minutes(4)), arguments: [1, 2, 3, 4] as [UInt64])
    func randomHistoriesKeepTheRules(seed: UInt64) async throws {
        try await ServerAccess.redis.using {
            let client = try await TestRedis.client("store-model")
            let queue = TestRedis.key("model").replacingOccurrences(of: ":", with: "-")
            var random = SplitMix64(seed: seed)
            struct Model {
                var attempt = 1
                var finished = false
                var holder: String?
                var running = false
                var retrying = false
                var cancelAsked = false
            }
            var stores: [String: RedisJobStore] = [:]
            var alive: [String] = []
            var born = 0
            func birth() async throws {
                born += 1
                let name = "i\(born)"
                let store = RedisJobStore(client: client, configuration: RedisJobStore.Configuration(queue: queue, instance: name))
                try await store.renewLease()
                stores[name] = store
                alive.append(name)
            }
            for _ in 0..<3 { try await birth() }
            var jobs = Array(repeating: Model(), count: 12)
            var history: [String] = []
            for step in 0..<400 {
                let roll = Int.random(in: 0..<100, using: &random)
                let index = Int.random(in: 0..<jobs.count, using: &random)
                let id = JobID("job-\(index)")
                var job = jobs[index]
                let holderAlive = job.holder.map(alive.contains) ?? false
                switch roll {
                case 0..<40:
                    let instance = alive[Int.random(in: 0..<alive.count, using: &random)]
                    let claim = try await stores[instance]!.claim([StoreClaimRequest(id: id, name: "work", attempt: job.attempt)])[0]
                    let othersHold = holderAlive && job.holder != instance
                    let expected: StoreClaim
                    if job.finished {
                        guard case .finished = claim else {
                            Issue.record("seed \(seed) step \(step): \(id) ended, yet \(instance) got \(claim); \(history.suffix(8))")
                            return
                        }
                        expected = claim
                    } else if job.cancelAsked, !(job.running && othersHold) {
                        expected = .cancelled
                        job.finished = true
                    } else if othersHold, !job.retrying {
                        expected = .heldElsewhere(instance: job.holder!)
                    } else {
                        expected = .claimed
                        (job.holder, job.running, job.retrying) = (instance, false, false)
                    }
                    #expect(claim == expected, "seed \(seed) step \(step): \(instance) claiming \(id) attempt \(job.attempt); \(history.suffix(8))")
                    history.append("\(instance) claims \(id): \(claim)")
                case 40..<55 where holderAlive && !job.finished && !job.running && !job.retrying:
                    try await stores[job.holder!]!.record([(id, .started(attempt: job.attempt))])
                    job.running = true
                    history.append("\(job.holder!) starts \(id)")
                case 55..<70 where holderAlive && job.running && !job.finished:
                    let end: JobChange = [.completed(result: [1]), .deadLettered(.rejected("x")), .cancelled][Int.random(in: 0..<3, using: &random)]
                    try await stores[job.holder!]!.record([(id, end)])
                    (job.finished, job.running) = (true, false)
                    history.append("\(job.holder!) ends \(id): \(end)")
                case 70..<80 where holderAlive && job.running && !job.finished:
                    try await stores[job.holder!]!.record([(id, .retrying(attempt: job.attempt, error: "failed"))])
                    (job.running, job.retrying, job.attempt) = (false, true, job.attempt + 1)
                    history.append("\(job.holder!) retries \(id)")
                case 80..<85 where alive.count > 1:
                    // An instance dies: its lease is gone (as when it expires).
                    let dead = alive.remove(at: Int.random(in: 0..<alive.count, using: &random))
                    try await stores[dead]!.releaseLease()
                    history.append("\(dead) dies")
                case 85..<90:
                    try await birth()
                    history.append("i\(born) is born")
                case 90..<100:
                    let outcome = try await stores[alive[0]]!.requestCancel(id)
                    if job.finished {
                        guard case .finished = outcome else {
                            Issue.record("seed \(seed) step \(step): cancelling ended \(id) answered \(outcome)")
                            return
                        }
                    } else {
                        guard case .requested = outcome else {
                            Issue.record("seed \(seed) step \(step): cancelling \(id) answered \(outcome); \(history.suffix(8))")
                            return
                        }
                        job.cancelAsked = true
                    }
                    history.append("cancel \(id): \(outcome)")
                default:
                    continue
                }
                jobs[index] = job
            }
            #expect(history.count > 200, "the histories did things: \(history.count) steps")
            await client.close()
        }
    }
}
