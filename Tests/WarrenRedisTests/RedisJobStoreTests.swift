import Foundation
import Synchronization
import Testing
import Warren
@testable import WarrenRedis
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

    @Test(.timeLimit(.minutes(1)))
    func anIdRunsOnceWhileItsHolderLivesAndNeverAgainOnceEnded() async throws {
        try await ServerAccess.redis.using {
            let (client, stores) = try await Self.stores(["a", "b"])
            let (a, b) = (stores[0], stores[1])
            try await a.renewLease()
            try await b.renewLease()
            let id = JobID("job-1")
            #expect(try await a.claim([(id, "email", 1)]) == [.claimed])
            #expect(try await b.claim([(id, "email", 1)]) == [.heldElsewhere(instance: "a")])
            // Its own redelivered copy: the process's own dedup decides.
            #expect(try await a.claim([(id, "email", 1)]) == [.claimed])
            try await a.record([(id, .started(attempt: 1))])
            #expect(try await b.claim([(id, "email", 1)]) == [.heldElsewhere(instance: "a")])
            try await a.record([(id, .completed(result: Array(#"{"sent":true}"#.utf8)))])
            #expect(try await b.claim([(id, "email", 1)]) == [.finished(.completed)])
            #expect(try await a.claim([(id, "email", 1)]) == [.finished(.completed)])
            let record = try #require(try await b.job(id))
            #expect(record.status == .completed && record.instance == "a" && record.attempt == 1 && record.name == "email")
            #expect(record.result == Array(#"{"sent":true}"#.utf8) && !record.resultTruncated && record.progress == 100)
            #expect(record.createdAt != nil && record.startedAt != nil && record.finishedAt != nil)
            #expect(try await b.job(JobID("never-seen")) == nil)
            await client.close()
        }
    }

    /// A holder whose lease expired (its process died) no longer holds its jobs; a retry (the next
    /// attempt) may be taken by any instance.
    @Test(.timeLimit(.minutes(1)))
    func aDeadHoldersJobsAndRetriesGoToOthers() async throws {
        try await ServerAccess.redis.using {
            let (client, stores) = try await Self.stores(["a", "b"], lease: .milliseconds(300))
            let (a, b) = (stores[0], stores[1])
            try await a.renewLease()
            let id = JobID("job-lease")
            #expect(try await a.claim([(id, "report", 1)]) == [.claimed])
            try await a.record([(id, .started(attempt: 1))])
            #expect(try await b.claim([(id, "report", 1)]) == [.heldElsewhere(instance: "a")])
            try await waitUntil("a's lease expires and b takes the job", within: 5) {
                (try? await b.claim([(id, "report", 1)])) == [.claimed]
            }
            #expect(try await b.job(id)?.instance == "b")

            let retried = JobID("job-retry")
            try await a.renewLease()
            #expect(try await a.claim([(retried, "report", 1)]) == [.claimed])
            try await a.record([(retried, .retrying(attempt: 1, error: "timeout"))])
            #expect(try await b.claim([(retried, "report", 2)]) == [.claimed])
            await client.close()
        }
    }

    /// A cancel asked before a job arrives means it never runs; asked while it runs, the holder
    /// hears of it on the cancel channel and nobody else takes it meanwhile.
    @Test(.timeLimit(.minutes(1)))
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
            #expect(try await a.claim([(early, "email", 1)]) == [.cancelled])
            #expect(try await a.job(early)?.status == .cancelled)
            #expect(try await b.requestCancel(early) == .finished(.cancelled))

            let running = JobID("running")
            #expect(try await a.claim([(running, "email", 1)]) == [.claimed])
            try await a.record([(running, .started(attempt: 1))])
            #expect(try await b.requestCancel(running) == .requested(status: .running, instance: "a"))
            #expect(try await b.claim([(running, "email", 1)]) == [.heldElsewhere(instance: "a")])
            try await a.record([(running, .cancelled)])
            #expect(try await b.claim([(running, "email", 1)]) == [.finished(.cancelled)])

            try await waitUntil("the channels carried the cancels and the ends", within: 5) {
                let seen = heard.withLock { $0 }
                return ["cancel not-yet-arrived", "done not-yet-arrived cancelled", "cancel running", "done running cancelled"]
                    .allSatisfy(seen.contains)
            }
            await subscriber.close()
            await client.close()
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func recordsProgressCapResultsAndExpire() async throws {
        try await ServerAccess.redis.using {
            let (client, stores) = try await Self.stores(["a"], resultLimit: 16)
            let a = stores[0]
            let id = JobID("big-result")
            #expect(try await a.claim([(id, "export", 1)]) == [.claimed])
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
            #expect(try await a.claim([(dead, "export", 1)]) == [.claimed])
            try await a.record([(dead, .deadLettered(reason: "retries_exhausted: boom"))])
            #expect(try await a.job(dead)?.status == .deadLettered)
            #expect(try await a.job(dead)?.error == "retries_exhausted: boom")
            await client.close()
        }
    }
}
