// explaind-explain: one image in, the explanation's heatmap PNG out (the server renders it).
//
//   explaind-explain --model shapes --image circle_0.png --out heat.png [--method rise]
//                    [--param num_masks=2000] [--target circle] [--seed 7] [--polarity both]
//                    [--server localhost:50051] [--timeout 60] [--token TOKEN] [--tls] [--tls-ca ca.pem]
//                    [--server-name NAME] [--quiet]
//
// Prints the target, the top classes and the cost; progress on stderr unless --quiet. Exit 0 on
// success, 1 when the server refuses (one line: "explaind-explain: CODE: details"), 2 for bad flags.
#include <cstdlib>
#include <iomanip>
#include <iostream>
#include <map>
#include <sstream>
#include <string>

#include <unistd.h>

#include "explaind/client.h"

namespace {

struct Flags {
  std::string server = "localhost:50051", model, image, out, method = "rise", target, polarity, token, tls_ca,
              server_name;
  std::map<std::string, std::string> params;
  uint64_t seed = 0;
  double timeout = 0;
  bool tls = false, quiet = false;
};

const char* kUsage =
    "usage: explaind-explain --model NAME --image FILE --out FILE [--method NAME] [--param NAME=VALUE]...\n"
    "       [--target LABEL|INDEX] [--seed N] [--polarity positive|negative|both|absolute]\n"
    "       [--server HOST:PORT] [--timeout SECONDS] [--token TOKEN] [--tls] [--tls-ca FILE]\n"
    "       [--server-name NAME] [--quiet]\n"
    "The token defaults to the environment variable EXPLAIND_TOKEN.\n";

[[noreturn]] void Usage(const std::string& problem) {
  std::cerr << "explaind-explain: " << problem << "\n" << kUsage;
  std::exit(2);
}

Flags Parse(int argc, char** argv) {
  Flags flags;
  if (const char* token = std::getenv("EXPLAIND_TOKEN")) flags.token = token;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "-h" || flag == "--help") {
      std::cout << kUsage;
      std::exit(0);
    }
    if (flag == "--tls") { flags.tls = true; continue; }
    if (flag == "--quiet") { flags.quiet = true; continue; }
    if (i + 1 >= argc) Usage(flag + " needs a value");
    const std::string value = argv[++i];
    if (flag == "--server") flags.server = value;
    else if (flag == "--model") flags.model = value;
    else if (flag == "--image") flags.image = value;
    else if (flag == "--out") flags.out = value;
    else if (flag == "--method") flags.method = value;
    else if (flag == "--target") flags.target = value;
    else if (flag == "--polarity") flags.polarity = value;
    else if (flag == "--token") flags.token = value;
    else if (flag == "--tls-ca") flags.tls_ca = value;
    else if (flag == "--server-name") flags.server_name = value;
    else if (flag == "--param") {
      const auto equals = value.find('=');
      if (equals == std::string::npos || equals == 0) Usage("--param: expected NAME=VALUE, got \"" + value + "\"");
      flags.params[value.substr(0, equals)] = value.substr(equals + 1);
    } else if (flag == "--seed" || flag == "--timeout") {
      try {
        size_t used = 0;
        if (flag == "--seed") flags.seed = std::stoull(value, &used);
        else flags.timeout = std::stod(value, &used);
        if (used != value.size() || flags.timeout < 0) throw std::invalid_argument(value);
      } catch (const std::exception&) {
        Usage(flag + ": expected a non-negative number, got \"" + value + "\"");
      }
    } else {
      Usage("unknown flag " + flag);
    }
  }
  if (flags.model.empty() || flags.image.empty() || flags.out.empty()) Usage("--model, --image and --out are required");
  return flags;
}

}  // namespace

int main(int argc, char** argv) {
  const Flags flags = Parse(argc, argv);
  explaind::v1::ExplainRequest request;
  explaind::ClientOptions options;
  try {
    request.set_model(flags.model);
    request.set_image(explaind::ReadFile(flags.image));
    request.set_seed(flags.seed);
    explaind::SetMethod(request, flags.method, flags.params);
    if (!flags.target.empty()) {
      if (flags.target.find_first_not_of("0123456789") == std::string::npos) {
        request.mutable_target()->set_class_index(std::stoi(flags.target));
      } else {
        request.mutable_target()->set_label(flags.target);
      }
    }
    auto* render = request.mutable_render();  // present: the response carries heatmap_png
    if (!flags.polarity.empty()) {
      explaind::v1::Polarity polarity;
      std::string upper;
      for (char c : flags.polarity) upper += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      if (!explaind::v1::Polarity_Parse(upper, &polarity) || polarity == explaind::v1::POLARITY_UNSPECIFIED) {
        Usage("--polarity: expected positive, negative, both or absolute, got \"" + flags.polarity + "\"");
      }
      render->set_polarity(polarity);
    }
    options.timeout = std::chrono::milliseconds(static_cast<int64_t>(flags.timeout * 1000));
    options.token = flags.token;
    options.tls = flags.tls;
    if (!flags.tls_ca.empty()) options.root_certificates = explaind::ReadFile(flags.tls_ca);
    options.server_name = flags.server_name;
  } catch (const std::exception& error) {
    std::cerr << "explaind-explain: " << error.what() << "\n";
    return 2;
  }

  try {
    const explaind::Client client(flags.server, options);
    // a terminal gets a progress line redrawn in place; a pipe or file only the last one, at the end
    const bool terminal = isatty(STDERR_FILENO);
    int last_percent = -1;
    std::string last;
    const auto response = client.ExplainStream(request, [&](const explaind::v1::Progress& progress) {
      const int percent = static_cast<int>(progress.fraction() * 100);
      if (flags.quiet || percent == last_percent) return;
      std::ostringstream line;
      line << (progress.stage().empty() ? "explaining" : progress.stage()) << " " << std::setw(3) << percent << "% ("
           << progress.rows_done() << "/" << progress.rows_total() << " rows)";
      last = line.str();
      last_percent = percent;
      if (terminal) std::cerr << "\r" << last << std::flush;
    });
    if (!last.empty()) std::cerr << (terminal ? "\n" : last + "\n");
    explaind::WriteFile(flags.out, response.heatmap_png());
    const auto attribution = explaind::FloatValues(response.attribution());
    std::cout << "target: " << response.target_label() << " (class " << response.target_class() << ")\n";
    for (const auto& score : response.top_classes()) {
      std::cout << "  " << std::left << std::setw(12) << score.label() << std::right << std::fixed
                << std::setprecision(4) << score.probability() << "\n";
    }
    std::cout << "attribution: [";
    for (int i = 0; i < response.attribution().shape_size(); ++i) std::cout << (i ? ", " : "") << response.attribution().shape(i);
    std::cout << "] float32, " << attribution.size() << " values\n";
    std::cout << "method: " << response.stats().method() << ", seed " << response.stats().seed() << ", "
              << response.stats().model_evaluations() << " model evaluations in " << response.stats().batches()
              << " batches, " << std::setprecision(3) << response.stats().total_seconds() << " s\n";
    std::cout << "heatmap: " << flags.out << " (" << response.heatmap_png().size() << " bytes)\n";
    return 0;
  } catch (const explaind::Error& error) {
    std::cerr << "explaind-explain: " << error.code_name() << ": " << error.details() << "\n";
    return 1;
  } catch (const std::exception& error) {
    std::cerr << "explaind-explain: " << error.what() << "\n";
    return 1;
  }
}
