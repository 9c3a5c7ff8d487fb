import ArgumentParser

@main
struct WarrenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "warren",
        abstract: "A job worker for RabbitMQ, with an embedded in-memory broker by default.",
        subcommands: [Demo.self, Serve.self, Submit.self, Status.self, Result.self, Cancel.self, Queues.self, DeadLetters.self, ConfigCommand.self])
}
