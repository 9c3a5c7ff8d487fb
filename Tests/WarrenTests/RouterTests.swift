import Testing
@_spi(Transport) @testable import Warren

@Suite("Routing across worker groups")
struct RouterTests {
    let cpu = WorkerGroup(name: "cpu", concurrency: 2, capabilities: ["cpu"])
    let gpu = WorkerGroup(name: "gpu", concurrency: 4, reservedForCritical: 1, capabilities: ["cpu", "gpu"])
    let io = WorkerGroup(name: "io", concurrency: 2, capabilities: ["cpu", "io"])

    @Test func roundRobinRotatesOverGroupsWithRoom() {
        var router = Router(strategy: .roundRobin)
        var loads = [GroupLoad(group: cpu), GroupLoad(group: gpu), GroupLoad(group: io)]
        var picks: [String] = []
        for _ in 0..<6 {
            let choice = router.route(Job(name: "x"), among: loads)!
            loads[choice.group].busy += 1
            picks.append(loads[choice.group].group.name)
        }
        #expect(picks == ["cpu", "gpu", "io", "cpu", "gpu", "io"])
        // cpu and io are full now: the rotation skips them.
        #expect(router.route(Job(name: "x"), among: loads).map { loads[$0.group].group.name } == "gpu")
    }

    @Test func leastLoadedPicksTheSmallestShareOfBusySlots() {
        var router = Router(strategy: .leastLoaded)
        let loads = [GroupLoad(group: cpu, busy: 1), GroupLoad(group: gpu, busy: 1), GroupLoad(group: io, busy: 2)]
        // cpu is 1/2 busy, gpu 1/5 (counting its reserved slot), io full.
        #expect(router.route(Job(name: "x"), among: loads)?.group == 1)
    }

    @Test func capabilitiesFilterGroups() {
        var router = Router(strategy: .roundRobin)
        let loads = [GroupLoad(group: cpu), GroupLoad(group: gpu), GroupLoad(group: io)]
        for _ in 0..<3 {
            #expect(router.route(Job(name: "x", requiredCapabilities: ["gpu"]), among: loads)?.group == 1)
            #expect(router.route(Job(name: "x", requiredCapabilities: ["io", "cpu"]), among: loads)?.group == 2)
        }
        #expect(router.route(Job(name: "x", requiredCapabilities: ["tpu"]), among: loads) == nil)
    }

    @Test func reservedSlotsTakeOnlyCriticalJobs() {
        var router = Router(strategy: .leastLoaded)
        let full = [GroupLoad(group: gpu, busy: 4)]
        #expect(router.route(Job(name: "x", priority: .high), among: full) == nil)
        let choice = router.route(Job(name: "x", priority: .critical), among: full)
        #expect(choice?.group == 0 && choice?.slot == .reserved)
        #expect(router.route(Job(name: "x", priority: .critical), among: [GroupLoad(group: gpu, busy: 4, reservedBusy: 1)]) == nil)
    }

    @Test func affinitySticksToOneGroupWhileItHasRoom() {
        var router = Router(strategy: .affinity)
        var loads = [GroupLoad(group: cpu), GroupLoad(group: gpu), GroupLoad(group: io)]
        let job = Job(name: "x", affinity: "customer-42")
        let first = router.route(job, among: loads)!.group
        for _ in 0..<5 { #expect(router.route(job, among: loads)?.group == first) }
        // Another router (another process) agrees: the hash is stable.
        var other = Router(strategy: .affinity)
        #expect(other.route(job, among: loads)?.group == first)
        // When that group is full, the job goes to the least loaded other one.
        loads[first].busy = loads[first].group.concurrency
        let fallback = router.route(job, among: loads)?.group
        #expect(fallback != nil && fallback != first)
        // Different keys spread over the groups.
        let spread = Set((0..<50).compactMap { router.route(Job(name: "x", affinity: "key-\($0)"), among: [GroupLoad(group: cpu), GroupLoad(group: gpu), GroupLoad(group: io)])?.group })
        #expect(spread.count == 3)
    }
}
