#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Warren

/// Jobs this process published: their ids for the dedup window, the jobs themselves (without
/// payloads) for status until they arrive here, and cancellations of jobs not arrived yet. One lock.
final class PublishedJobs: Sendable {
    private struct State {
        var known: RecentIDs
        var published: [JobID: Job] = [:]
        var tombstones = RecentIDs(capacity: 10_000)
    }
    private let state: Locked<State>

    init(window: Int) {
        state = Locked(State(known: RecentIDs(capacity: max(1, window))))
    }

    func isKnown(_ id: JobID) -> Bool { state.withLock { $0.known.contains(id) } }
    func published(_ id: JobID) -> Job? { state.withLock { $0.published[id] } }
    /// Cancelled before it arrived: it is cancelled when it does.
    func tombstone(_ id: JobID) { state.withLock { $0.tombstones.insert(id) } }

    func remember(_ jobs: [Job]) {
        let now = Date()
        state.withLock { state in
            for var job in jobs {
                state.known.insert(job.id)
                job.payload = Data()
                if (job.notBefore ?? now) > now || !job.dependencies.isEmpty { job.status = .pending } else { job.status = .queued }
                state.published[job.id] = job
            }
            // Bounded like the dedup window: the oldest entries go when it overflows.
            if state.published.count > state.known.capacity {
                state.published = state.published.filter { state.known.contains($0.key) }
            }
        }
    }

    /// A publish that failed: not known after all.
    func forget(_ id: JobID) {
        state.withLock { state in
            _ = state.known.remove(id)
            state.published[id] = nil
        }
    }

    /// Notes jobs that arrived here: no longer answered from what was published. `holding` (jobs
    /// that wait here for their dependencies) stay in the window meanwhile. Returns the ones
    /// cancelled before they arrived.
    func arrived(_ ids: some Sequence<JobID>, holding: [JobID]) -> Set<JobID> {
        state.withLock { state in
            var cancelled = Set<JobID>()
            for id in ids {
                if !state.published.isEmpty { state.published[id] = nil }
                if !state.tombstones.isEmpty, state.tombstones.remove(id) { cancelled.insert(id) }
            }
            for id in holding { state.known.insert(id) }
            return cancelled
        }
    }
}
