#pragma once
// Subcommands of the `kvferry` binary. Each Add*Command registers one subcommand
// (with its options and callback) on the root app; main() only wires them up.
// A callback's return value is the process exit code.

namespace CLI {
class App;
}

namespace kvferry::apps {

// Registers `bench` (with transfer and memcpy); returns it so others can add benches.
CLI::App& AddBenchCommand(CLI::App& root);
// `demo`: the main job of the README's quick start.
void AddDemoCommand(CLI::App& root);

// `kvferry tokenize MODEL_DIR TEXT | --ids 1,2,3 | --chat JSON` (apps/tokenize_cmd.cc).
void AddTokenizeCommand(CLI::App& app);
// `kvferry model ...` (model_cmd.cc).
void AddModelCommand(CLI::App& app);
// `kvferry bench model` and `kvferry bench membw`, added to the `bench` subcommand
// (bench_model_cmd.cc).
void AddModelBenchCommands(CLI::App& bench);

// `kvferry run MODEL_DIR --prompt-token-ids ...` (run_cmd.cc).
void AddRunCommand(CLI::App& app);
// `kvferry bench engine`, added to the `bench` subcommand (bench_engine_cmd.cc).
void AddEngineBenchCommand(CLI::App& bench);

// `kvferry serve MODEL_DIR` (serve_cmd.cc) and `kvferry bench serve` (bench_serve_cmd.cc); only
// in builds with the HTTP component (KVFERRY_WITH_SERVE).
void AddServeCommand(CLI::App& app);
void AddServeBenchCommand(CLI::App& bench);

// Set by a subcommand's callback; main() returns it.
int& ExitCode();

}  // namespace kvferry::apps
