import Foundation
import Testing
import Warren
@testable import WarrenAMQP
import WarrenService
import Yams
#if canImport(Glibc)
import Glibc
#endif

/// The docker compose deployment, checked without a docker engine: the file is validated with
/// `docker-compose config` in both profiles, and the same configuration runs natively against the
/// test broker.
@Suite("docker compose")
struct ComposeTests {
    static let composeFile = TestEnvironment.root.appendingPathComponent("compose/docker-compose.yml").path

    struct Compose: Decodable {
        struct Service: Decodable {
            struct Build: Decodable {
                var context: String?
                var dockerfile: String?
            }

            struct Healthcheck: Decodable {
                var test: [String]?
            }

            var image: String?
            var build: Build?
            var pullPolicy: String?
            var profiles: [String]?
            var hostname: String?
            var command: [String]?
            var runsInit: Bool?
            var environment: [String: String]?
            var stopGracePeriod: String?
            var dependsOn: [String: [String: String]]?
            var secrets: [String]?
            var volumes: [String]?
            var ports: [String]?
            var healthcheck: Healthcheck?

            enum CodingKeys: String, CodingKey {
                case image, build, profiles, hostname, command, environment, secrets, volumes, ports, healthcheck
                case pullPolicy = "pull_policy"
                case runsInit = "init"
                case stopGracePeriod = "stop_grace_period"
                case dependsOn = "depends_on"
            }

            /// Whether `docker compose [--profile P] up` starts it (nil: no --profile flag): a
            /// service without profiles runs in every one.
            func runs(in profile: String?) -> Bool {
                guard let profiles, !profiles.isEmpty else { return true }
                return profile.map { profiles.contains($0) } ?? false
            }

            var isRabbitMQ: Bool { image?.hasPrefix("rabbitmq:") == true }
            /// Runs the Warren image: `warren serve` or the producer's `warren submit`.
            var runsWarren: Bool { image == "warren:local" }
            var isWorker: Bool { runsWarren && command == ["serve"] }
        }

        var services: [String: Service]

        func services(in profile: String?) -> [String: Service] { services.filter { $0.value.runs(in: profile) } }
    }

    /// The compose file as written; YAML anchors and merge keys (`<<: *warren`) are resolved.
    func compose() throws -> Compose {
        try YAMLDecoder().decode(Compose.self, from: String(contentsOfFile: Self.composeFile, encoding: .utf8))
    }

    func text(_ path: String) throws -> String {
        try String(contentsOfFile: TestEnvironment.root.appendingPathComponent(path).path, encoding: .utf8)
    }

    func validate(profile: String?) async throws {
        let flags = profile.map { ["--profile", $0] } ?? []
        let child = try ChildProcess(
            "/usr/bin/env", ["docker-compose", "-f", Self.composeFile] + flags + ["config", "--quiet"],
            environment: ProcessInfo.processInfo.environment)
        let exit = try await child.exit(within: 50)
        #expect(exit == .exited(0), "docker-compose \(flags.joined(separator: " ")) config: \(child.output)")
    }

    @Test(.timeLimit(.minutes(1)))
    func theComposeFileIsValid() async throws {
        try await validate(profile: nil)
        try await validate(profile: "cluster")
        let file = try compose()
        let services = file.services(in: nil)
        #expect(Set(services.keys) == ["rabbitmq", "redis", "orders", "warren", "producer"], "the default profile: \(services.keys.sorted())")
        let warren = try #require(services["warren"])
        #expect(warren.dependsOn?["rabbitmq"]?["condition"] == "service_healthy", "Warren waits for a healthy RabbitMQ")
        let grace = ServiceConfiguration.duration(warren.environment?["WARREN_WORKER_SHUTDOWN_GRACE"] ?? "") ?? .zero
        let stop = ServiceConfiguration.duration(warren.stopGracePeriod ?? "") ?? .zero
        #expect(grace > .zero && stop > grace, "docker's stop grace period (\(stop)) is longer than Warren's drain (\(grace))")
        #expect(warren.secrets == ["broker-password", "state-password"], "the broker's and the store's passwords come from secret files")
        // The job-state store: Redis, its password from the same secret, and Warren waits for it.
        let redis = try #require(services["redis"])
        #expect(redis.image?.hasPrefix("redis:7.") == true && redis.secrets == ["state-password"], "\(String(describing: redis.image))")
        #expect(warren.environment?["WARREN_STATE_URL"] == "redis://redis:6379/0")
        #expect(warren.dependsOn?["redis"]?["condition"] == "service_healthy", "Warren waits for a healthy Redis")
        #expect(warren.environment?["WARREN_QUEUE_TYPE"] == "quorum", "Warren's queues are quorum queues")
        #expect(services["rabbitmq"]?.ports?.contains("127.0.0.1:5672:5672") == true, "producers outside compose reach AMQP")

        for (name, service) in file.services where service.isRabbitMQ {
            #expect(service.image?.hasPrefix("rabbitmq:4.") == true, "\(name) runs RabbitMQ 4.x: \(service.image ?? "")")
        }
        // warren:local is built by the compose file, never pulled: a registry has no such image.
        let builders = file.services.filter { $0.value.build != nil }
        #expect(builders.count == 1 && builders.values.first?.image == "warren:local", "one service builds warren:local")
        for (name, service) in file.services where service.runsWarren {
            #expect(service.build != nil || service.pullPolicy == "never", "\(name) uses warren:local: built here or never pulled")
            #expect(service.runsInit == true, "\(name) runs under an init that forwards signals and reaps exec handlers' orphans")
        }

        // The healthcheck asks /readyz on Warren's own port, with a program the runtime image has.
        let runtimeStage = try text("compose/Dockerfile").components(separatedBy: "\nFROM ").last ?? ""
        // The C client libraries warren links (rabbitmq-c, hiredis): their headers where it is
        // built, the libraries where it runs.
        let stages = try text("compose/Dockerfile").components(separatedBy: "\nFROM ")
        let buildStage = stages.count > 2 ? stages[1] : ""
        #expect(buildStage.contains(" librabbitmq-dev ") && buildStage.contains(" libhiredis-dev "), "the build stage installs the headers")
        let ldd = try ChildProcess("/usr/bin/ldd", [TestEnvironment.binary("warren")])
        #expect(try await ldd.exit(within: 30) == .exited(0))
        for line in ldd.lines where line.contains("rabbitmq") || line.contains("hiredis") {
            // By file name: with a merged /usr, dpkg knows /usr/lib/… where ldd says /lib/….
            let library = String(line.split(separator: " ").first ?? "").trimmingCharacters(in: .whitespaces)
            let owner = try ChildProcess("/usr/bin/dpkg", ["-S", library])
            _ = try await owner.exit(within: 30)
            let package = owner.output.split(separator: ":").first.map(String.init) ?? "?"
            #expect(runtimeStage.contains(" \(package) "), "the runtime image installs \(package), which warren links (\(library))")
        }
        for (name, service) in file.services where service.isWorker {
            let test = service.healthcheck?.test ?? []
            let port = service.environment?["WARREN_HTTP_ADDRESS"]?.split(separator: ":").last.map(String.init) ?? "none"
            #expect(test.first == "CMD" && test.contains("http://127.0.0.1:\(port)/readyz"), "\(name)'s healthcheck: \(test)")
            let program = test.dropFirst().first ?? ""
            #expect(!program.isEmpty && runtimeStage.contains(" \(program)"), "the runtime image installs \(program)")
        }

        // The producer's warren submit reads the same broker and queue settings as warren serve,
        // and starts once Warren is ready (Warren declares the topology; submit only checks it).
        let producer = try #require(services["producer"])
        #expect(producer.dependsOn?["warren"]?["condition"] == "service_healthy", "the producer waits for a ready Warren")
        for key in ["WARREN_BROKER_URL", "WARREN_QUEUE_NAME", "WARREN_QUEUE_TYPE"] {
            #expect(producer.environment?[key] != nil && producer.environment?[key] == warren.environment?[key], "the producer's \(key) is Warren's")
        }
        #expect(producer.secrets == ["broker-password"])

        // The classic builder reads only the context's .dockerignore: .build (hundreds of MB) and a
        // local Package.resolved stay out of the build context.
        let ignored = try text(".dockerignore").split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty && !$0.hasPrefix("#") }
        #expect(ignored.first == "*" && !ignored.contains { $0.hasPrefix("!.build") || $0.hasPrefix("!Package.resolved") }, "\(ignored)")
    }

    @Test(.timeLimit(.minutes(1)))
    func theClusterProfileRunsThreeNodesAndTwoWarrensOnOneQueue() throws {
        let file = try compose()
        let services = file.services(in: "cluster")
        let nodes = services.filter { $0.value.isRabbitMQ }
        let workers = services.filter { $0.value.isWorker }
        #expect(nodes.count == 3, "three RabbitMQ nodes: \(nodes.keys.sorted())")
        #expect(workers.count == 2, "two Warren instances: \(workers.keys.sorted())")
        #expect(services["producer"] != nil && services["orders"] != nil)

        // A node is rabbit@<hostname>; the hostname is its service name, which the URLs name.
        for (name, node) in nodes {
            #expect(node.hostname == name, "\(name)'s node name is rabbit@\(name)")
            #expect(node.secrets?.contains("erlang-cookie") == true, "\(name) shares the cluster's Erlang cookie")
        }
        let clusterConfig = try text("compose/rabbitmq-cluster.conf")
        let joining = nodes.filter { $0.value.volumes?.contains { $0.hasPrefix("./rabbitmq-cluster.conf:") } == true }
        let seeds = nodes.keys.filter { joining[$0] == nil }
        #expect(joining.count == 2 && seeds.count == 1, "two nodes join the third: \(joining.keys.sorted())")
        #expect(clusterConfig.contains("cluster_formation.peer_discovery_backend = classic_config"))
        for seed in seeds {
            #expect(clusterConfig.contains("= rabbit@\(seed)\n"), "the joining nodes discover rabbit@\(seed)")
            for (name, node) in joining {
                #expect(node.dependsOn?.values.allSatisfy { $0["condition"] == "service_healthy" } == true, "\(name) starts after a healthy node")
            }
        }

        // Both Warrens consume one queue and are given every node, in one comma-separated list.
        let queues = Set(workers.values.map { $0.environment?["WARREN_QUEUE_NAME"] ?? "" })
        #expect(queues.count == 1 && queues.first?.isEmpty == false, "one queue: \(queues)")
        for (name, worker) in workers {
            let list = worker.environment?["WARREN_BROKER_URL"] ?? ""
            let urls = try list.split(separator: ",").map { try AMQPURL(String($0)) }
            #expect(urls.count == nodes.count && Set(urls.map(\.host)) == Set(nodes.keys), "\(name) is given every node: \(list)")
            let passwords = list.split(separator: ",").filter { url in
                AMQPURL.userInfo(in: String(url)).map { String(url)[$0].contains(":") } ?? false
            }
            #expect(passwords.isEmpty && worker.secrets?.contains("broker-password") == true, "the secret's password applies to each URL")
            #expect(worker.environment?["WARREN_STATE_URL"] == "redis://redis:6379/0", "\(name) shares the job-state store")
            #expect(worker.environment?["WARREN_QUEUE_TYPE"] == "quorum", "\(name)'s queues are replicated")
        }
        // The cluster's own Warren starts once every node has joined.
        let second = try #require(workers.first { $0.value.profiles?.contains("cluster") == true })
        for node in nodes.keys {
            #expect(second.value.dependsOn?[node]?["condition"] == "service_healthy", "\(second.key) waits for \(node)")
        }
        let published = workers.values.flatMap { $0.ports ?? [] }
        #expect(published.count == 2 && Set(published).count == 2, "each Warren's metrics on a port of its own: \(published)")
    }

    @Test(.timeLimit(.minutes(4)))
    func theComposeConfigurationRunsNativelyAndDrainsOnSIGTERM() async throws {
        try await ServerAccess.redis.using { try await usingBroker { try await runTheComposeConfigurationNatively() } }
    }

    func runTheComposeConfigurationNatively() async throws {
        let service = try await FakeService { call in
            let payload = (try? JSONSerialization.jsonObject(with: call.body)) as? [String: Any] ?? [:]
            if payload["slow"] as? Bool == true { try? await Task.sleep(for: .milliseconds(1_500)) }
            return (200, #"{"confirmed": \#(payload["order"] ?? "null")}"#)
        }
        let file = try compose()
        let warren = try #require(file.services["warren"])
        // The compose file's environment (quorum queues among it), with what only differs outside
        // docker: where RabbitMQ is (the test broker's one URL for the file's list of nodes) and
        // the orders service, the handlers file's path, a free HTTP port (port 0: the log says
        // which), this test's queue.
        var environment = warren.environment ?? [:]
        #expect(environment["WARREN_QUEUE_TYPE"] == "quorum")
        let queue = TestEnvironment.unique()
        var url = try AMQPURL(try TestEnvironment.amqpURL)
        let password = url.password
        url.password = ""
        let secrets = NSTemporaryDirectory() + "warren-secrets-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: secrets, withIntermediateDirectories: true)
        try "\(password)\n".write(toFile: secrets + "/broker-password", atomically: false, encoding: .utf8)
        environment["WARREN_BROKER_URL"] = "amqp://\(url.user)@\(url.host):\(url.port)/"
        // The test Redis for the file's redis service, its password in the state-password secret.
        #expect(environment["WARREN_STATE_URL"] == "redis://redis:6379/0")
        let redis = try TestEnvironment.redisURL
        let scheme = try #require(redis.range(of: "://")), at = try #require(redis.lastIndex(of: "@"))
        let statePassword = redis[scheme.upperBound..<at].split(separator: ":", omittingEmptySubsequences: false).last ?? ""
        try "\(statePassword)\n".write(toFile: secrets + "/state-password", atomically: false, encoding: .utf8)
        environment["WARREN_STATE_URL"] = "redis://" + redis[redis.index(after: at)...]
        environment["WARREN_SECRETS_DIR"] = secrets
        environment["WARREN_HANDLERS_FILE"] = TestEnvironment.root.appendingPathComponent("compose/handlers.yaml").path
        environment["WARREN_HTTP_ADDRESS"] = "127.0.0.1:0"
        environment["WARREN_QUEUE_NAME"] = queue
        environment["ORDERS_URL"] = service.url
        environment["PATH"] = ProcessInfo.processInfo.environment["PATH"]
        let warrenProcess = try ChildProcess(TestEnvironment.binary("warren"), ["serve"], environment: environment)
        let address = Locked<String?>(nil)
        try await waitUntil("the operations server's address in the log", within: 30) {
            let listening = warrenProcess.lines.lazy
                .compactMap { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any] }
                .first { $0["message"] as? String == "operations server listening" }
            address.withLock { $0 = listening?["http_address"] as? String }
            return address.withLock { $0 } != nil
        }
        let base = "http://\(address.withLock { $0 }!)"
        try await waitUntil("/readyz", within: 30) { await get("\(base)/readyz")?.0 == 200 }
        #expect(await get("\(base)/healthz")?.0 == 200)

        // Jobs from a plain AMQP client: a JSON body, a routing key and a type, nothing else.
        let producer = try RawConnection(url: try AMQPURL(try TestEnvironment.amqpURL))
        defer { producer.close() }
        func publish(_ body: String) throws -> String {
            let id = UUID().uuidString
            try producer.publish(OutgoingMessage(
                exchange: "warren", routingKey: "\(queue).normal",
                properties: MessageProperties(contentType: "application/json", deliveryMode: 2, messageID: id, type: "orders.confirm"),
                body: Array(body.utf8)))
            return id
        }
        var quick: [String] = []
        for n in 0..<200 { quick.append(try publish(#"{"order": \#(n)}"#)) }
        let quickIDs = quick
        try await waitUntil("200 orders confirmed", within: 60) { service.completed.isSuperset(of: quickIDs) }
        let calls = service.received
        let first = try #require(calls.first)
        #expect(first.path == "/confirm")
        #expect(first.headers["x-warren-job-name"] == "orders.confirm" && first.headers["x-warren-attempt"] == "1")
        #expect(first.headers["traceparent"]?.hasPrefix("00-") == true)
        let metrics = await get("\(base)/metrics")?.1 ?? ""
        #expect(metrics.contains(#"outcome="completed""#) && metrics.contains("warren_job_duration_seconds_bucket"))
        let job = await get("\(base)/jobs/\(quick[0])")
        #expect(job?.0 == 200 && job?.1.contains(#""status":"completed""#) == true, "\(String(describing: job))")
        #expect(await get("\(base)/jobs/nobody")?.0 == 404)

        // The command-line tools, with the same environment.
        let submit = try ChildProcess(
            TestEnvironment.binary("warren"), ["submit", "orders.confirm", "--payload", #"{"order": 77}"#, "--wait", "--timeout", "20s"],
            environment: environment)
        #expect(try await submit.exit(within: 30) == .exited(0))
        #expect(submit.output.contains(#"{"confirmed": 77}"#), "submit --wait prints the result: \(submit.output)")
        #expect(warrenProcess.output.contains("using the job-state store"), "serve uses the compose file's store")
        let status = try ChildProcess(TestEnvironment.binary("warren"), ["status", quick[0]], environment: environment)
        #expect(try await status.exit(within: 30) == .exited(0))
        #expect(status.output.contains("status: completed"), "warren status reads the store: \(status.output)")
        let queues = try ChildProcess(TestEnvironment.binary("warren"), ["queues"], environment: environment)
        #expect(try await queues.exit(within: 30) == .exited(0))
        #expect(queues.output.contains("\(queue).normal") && queues.output.contains("\(queue).dead"), "\(queues.output)")

        // SIGTERM with slow jobs running and more waiting: running ones finish, the rest go back.
        var slow: [String] = []
        for n in 0..<40 { slow.append(try publish(#"{"order": \#(1_000 + n), "slow": true}"#)) }
        try await waitUntil("slow orders running", within: 30) { service.received.count >= 201 + 4 }
        warrenProcess.signal(SIGTERM)
        let exit = try await warrenProcess.exit(within: 30)
        #expect(exit == .exited(0), "warren serve exited \(exit): \(warrenProcess.output.suffix(2_000))")
        #expect(service.mostAtOnce <= 4, "orders.confirm runs at most 4 at once (its handler's concurrency), not 8: \(service.mostAtOnce)")
        let started = Set(service.received.compactMap { $0.headers["x-warren-job-id"] })
        let finished = service.completed
        #expect(started.isSubset(of: finished), "every request Warren started was let finish")
        let inspector = try RawConnection(url: try AMQPURL(try TestEnvironment.amqpURL))
        defer { inspector.close() }
        let slowDone = Set(slow).intersection(finished).count
        // A quorum queue takes back a closed connection's unacked messages and drops its consumers
        // a moment after the connection is gone (a command through the queue's log): wait for it.
        var counts = try inspector.declareQueue("\(queue).normal", passive: true)
        let settled = ContinuousClock.now + .seconds(10)
        while counts.consumers != 0 || counts.messages != slow.count - slowDone, ContinuousClock.now < settled {
            try await Task.sleep(for: .milliseconds(20))
            counts = try inspector.declareQueue("\(queue).normal", passive: true)
        }
        #expect(counts.consumers == 0)
        #expect(counts.messages == slow.count - slowDone, "no job lost: \(slowDone) done + \(counts.messages) back in the queue = \(slow.count)")
        // Logs are JSON lines (the compose file sets log.format json) with job ids.
        let lines = warrenProcess.output.split(separator: "\n")
        #expect(!lines.isEmpty && lines.allSatisfy { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) != nil })
        #expect(lines.contains { $0.contains("drained") })
        for name in ["critical", "high", "normal", "low", "background"] { try inspector.deleteQueue("\(queue).\(name)") }
        try inspector.deleteQueue("\(queue).dead")
        try? FileManager.default.removeItem(atPath: secrets)
    }
}
