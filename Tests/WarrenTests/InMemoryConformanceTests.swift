import Testing
import Warren
import WarrenConformance

@Suite("Conformance: in-memory broker")
struct InMemoryConformanceTests {
    @Test(.timeLimit(.minutes(1)), arguments: ConformanceSuite.cases)
    func conformance(_ testCase: ConformanceCase) async throws {
        try await testCase.run { context in InMemoryBroker(configuration: context.configuration) }
    }
}
