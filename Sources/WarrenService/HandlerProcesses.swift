#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Logging
import Warren
import WarrenIO

/// The process groups of exec commands, so that none outlives `serve`. A job stopped by a
/// shutdown is settled (back in its queue) at once, while its command gets SIGTERM and, a second
/// later, SIGKILL; a command that ignores SIGTERM, or children left behind by a command that
/// ended (a shell killed while its program runs on), would otherwise outlive the process,
/// reparented to init, and run on beside the copy another worker takes. Each command leads a group
/// of its own (`ExecHandler`); its group is known here from its start until `ExecHandler` is done
/// with it (a stopped command's group has had SIGKILL by then). While known, its leader is
/// alive or only just reaped, and a group's id stays taken while it has members: a SIGKILL to a
/// known group cannot reach another's.
enum HandlerProcesses {
    private static let known = Locked<Set<pid_t>>([])

    /// A command started, leading group `group`.
    static func started(_ group: pid_t) { known.withLock { _ = $0.insert(group) } }

    /// `ExecHandler` is done with the group.
    static func ended(_ group: pid_t) { known.withLock { _ = $0.remove(group) } }

    /// The known groups that still have a live (not zombie) member, from /proc.
    static func liveGroups() -> Set<pid_t> {
        let groups = known.withLock { $0 }
        guard !groups.isEmpty else { return [] }
        var live: Set<pid_t> = []
        for (_, process) in ProcessStat.all() where !process.isZombie {
            if let group = process.processGroup, groups.contains(group) { live.insert(group) }
        }
        return live
    }

    /// Waits up to `patience` for the groups to end, then kills what is left with SIGKILL.
    static func end(patience: Duration, logger: Logger) async {
        let deadline = ContinuousClock.now + patience
        while !liveGroups().isEmpty, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(10))
        }
        kill(logger: logger)
    }

    /// SIGKILL to every group left, at once.
    static func kill(logger: Logger) {
        for group in liveGroups().sorted() {
            logger.warning(
                "a handler command was still running at exit (it, or what it started, ignored SIGTERM): killing its process group",
                metadata: ["process_group": "\(group)"])
            _ = Glibc.kill(-group, SIGKILL)
        }
    }
}
