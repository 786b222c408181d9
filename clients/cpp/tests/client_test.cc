// The C++ client against the real servers of server_fixture.py (ctest runs it between servers_start
// and servers_stop): explaind_client_test STATE. Prints one line per test, then "N passed, M failed".
#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "explaind/client.h"

namespace {

namespace v1 = explaind::v1;

struct Failure {
  std::string what;
};

#define CHECK(condition)                                                                              \
  do {                                                                                                \
    if (!(condition)) throw Failure{std::string(__FILE__ ":") + std::to_string(__LINE__) + ": " #condition}; \
  } while (0)

std::map<std::string, std::string> state;

std::string Demo(const std::string& path) { return state.at("demo") + "/" + path; }

// The error a call throws (an explaind::Error), or a failure when it does not throw one.
template <typename Call>
explaind::Error ErrorOf(Call call) {
  try {
    call();
  } catch (const explaind::Error& error) {
    return error;
  }
  throw Failure{"expected the call to throw explaind::Error"};
}

template <typename Call>
std::string InvalidArgumentOf(Call call) {
  try {
    call();
  } catch (const std::invalid_argument& error) {
    return error.what();
  }
  throw Failure{"expected std::invalid_argument"};
}

// The rows of the tabular demo's background.npy ([100, 13] float32, numpy format 1.0).
std::vector<std::vector<float>> BackgroundRows() {
  const std::string bytes = explaind::ReadFile(Demo("repository/tabular/background.npy"));
  CHECK(bytes.compare(1, 5, "NUMPY") == 0 && bytes[6] == 1);
  const size_t header = static_cast<unsigned char>(bytes[8]) | static_cast<unsigned char>(bytes[9]) << 8;
  const std::string dict = bytes.substr(10, header);
  CHECK(dict.find("'descr': '<f4'") != std::string::npos && dict.find("(100, 13)") != std::string::npos);
  std::vector<std::vector<float>> rows(100, std::vector<float>(13));
  for (size_t i = 0; i < 100; ++i) std::memcpy(rows[i].data(), bytes.data() + 10 + header + i * 13 * 4, 13 * 4);
  return rows;
}

float ScoreOf(const v1::ExplainResponse& response, int index) {
  for (const auto& c : response.top_classes()) {
    if (c.class_index() == index) return c.probability();
  }
  throw Failure{"class " + std::to_string(index) + " not in top_classes"};
}

v1::ExplainRequest ImageRequest(const std::string& method, const std::map<std::string, std::string>& params = {}) {
  v1::ExplainRequest request;
  request.set_model("shapes");
  request.set_image(explaind::ReadFile(Demo("examples/circle_0.png")));
  explaind::SetMethod(request, method, params);
  return request;
}

explaind::Client Plain() {
  explaind::ClientOptions options;
  options.timeout = std::chrono::seconds(120);
  return explaind::Client(state.at("plain"), options);
}

void ListsModels() {
  const auto models = Plain().ListModels();
  std::map<std::string, v1::ModelInfo> by_name;
  for (const auto& m : models) by_name[m.name()] = m;
  CHECK(by_name.count("shapes") && by_name.count("tabular"));
  CHECK(by_name["shapes"].status() == v1::READY);
  CHECK(by_name["shapes"].kind() == v1::IMAGE);
  CHECK(by_name["tabular"].num_features() == 13);
  const auto shapes = Plain().GetModel("shapes");
  const std::vector<std::string> labels(shapes.labels().begin(), shapes.labels().end());
  CHECK((labels == std::vector<std::string>{"circle", "square", "triangle", "cross", "star"}));
  CHECK(shapes.preprocess().size_size() == 2 && shapes.preprocess().size(0) == 64);
  const auto methods = Plain().ListMethods("tabular");
  CHECK(std::any_of(methods.begin(), methods.end(), [](const v1::MethodInfo& m) { return m.name() == "kernel_shap"; }));
  CHECK(std::none_of(methods.begin(), methods.end(), [](const v1::MethodInfo& m) { return m.name() == "saliency"; }));
}

// attribution_i = p_c(x) - p_c(x with feature i = 0), each p read back from the server.
void TabularOcclusionByHand() {
  const auto client = Plain();
  const std::vector<float> x = BackgroundRows()[0];
  auto request_for = [](const std::vector<float>& row) {
    v1::ExplainRequest request;
    request.set_model("tabular");
    *request.mutable_tensor() = explaind::FloatTensor(row, {13});
    explaind::SetMethod(request, "occlusion", {{"baseline", "0"}});
    return request;
  };
  const auto first = client.Explain(request_for(x));
  const auto attribution = explaind::FloatValues(first.attribution());
  CHECK(attribution.size() == 13);
  const float p = ScoreOf(first, first.target_class());
  bool some = false;
  for (int i = 0; i < 13; ++i) {
    std::vector<float> xi = x;
    xi[i] = 0;
    auto request = request_for(xi);
    request.mutable_target()->set_class_index(first.target_class());
    const float pi = ScoreOf(client.Explain(request), first.target_class());
    CHECK(std::fabs(attribution[i] - (p - pi)) < 1e-5);
    some = some || attribution[i] != 0;
  }
  CHECK(some);
  CHECK(first.stats().model_evaluations() == 1 + 1 + 13);
}

void ImageWithHeatmap() {
  auto request = ImageRequest("occlusion", {{"window", "8,8"}, {"stride", "4,4"}});
  request.mutable_render()->set_polarity(v1::BOTH);
  const auto response = Plain().Explain(request);
  CHECK(response.attribution().shape_size() == 2 && response.attribution().shape(0) == 64);
  CHECK(explaind::FloatValues(response.attribution()).size() == 64 * 64);
  CHECK(response.target_label() == "circle");
  const std::string& png = response.heatmap_png();
  CHECK(png.compare(0, 8, "\x89PNG\r\n\x1a\n") == 0);
  const auto be32 = [&](size_t at) {
    return static_cast<uint32_t>(static_cast<unsigned char>(png[at])) << 24 | static_cast<unsigned char>(png[at + 1]) << 16 |
           static_cast<unsigned char>(png[at + 2]) << 8 | static_cast<unsigned char>(png[at + 3]);
  };
  CHECK(be32(16) == 64 && be32(20) == 64);
  CHECK(response.stats().model_evaluations() == 1 + 1 + 15 * 15);
  CHECK(response.stats().method() == "occlusion");
  const auto& window = response.stats().parameters().fields().at("window").list_value();
  CHECK(window.values_size() == 2 && window.values(0).number_value() == 8);
}

void StreamMatchesExplain() {
  auto request = ImageRequest("rise", {{"num_masks", "2000"}});
  request.set_seed(7);
  std::vector<v1::Progress> progress;
  int partials = 0;
  const auto client = Plain();
  const auto streamed = client.ExplainStream(
      request, [&](const v1::Progress& p) { progress.push_back(p); },
      [&](const v1::ExplainResponse& partial) {
        ++partials;
        CHECK(!partial.complete());
      });
  const auto direct = client.Explain(request);
  CHECK(streamed.attribution().data() == direct.attribution().data());
  CHECK(streamed.stats().seed() == 7);
  CHECK(streamed.complete());
  CHECK(progress.size() >= 2);
  CHECK(progress.back().rows_done() == progress.back().rows_total());
  CHECK(partials >= 1);
}

void EvaluateGivenEqualsComputed() {
  const auto client = Plain();
  const auto explanation = client.Explain(ImageRequest("grad_cam"));
  v1::EvaluateRequest computed;
  *computed.mutable_explain() = ImageRequest("grad_cam");
  explaind::AddMetric(*computed.mutable_metrics(), "deletion", {{"steps", "20"}});
  v1::EvaluateRequest given = computed;
  given.mutable_explain()->clear_grad_cam();
  *given.mutable_attribution() = explanation.attribution();
  const auto a = client.Evaluate(computed), b = client.Evaluate(given);
  CHECK(a.results_size() == 1 && a.results(0).metric() == "deletion");
  CHECK(a.results(0).value() >= 0 && a.results(0).value() <= 1);
  CHECK(std::fabs(a.results(0).value() - b.results(0).value()) < 1e-9);
  CHECK(explaind::FloatValues(a.results(0).curves().at("scores")).size() >= 20);
}

void ServerErrors() {
  const auto client = Plain();
  auto error = ErrorOf([&] { client.GetModel("no-such-model"); });
  CHECK(error.code() == grpc::StatusCode::NOT_FOUND && error.code_name() == "NOT_FOUND");
  CHECK(error.details().find("no-such-model") != std::string::npos);
  v1::ExplainRequest bad;
  bad.set_model("tabular");
  *bad.mutable_tensor() = explaind::FloatTensor({1, 2, 3}, {3});
  explaind::SetMethod(bad, "occlusion");
  error = ErrorOf([&] { client.Explain(bad); });
  CHECK(error.code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(error.details().find("tensor") != std::string::npos && error.details().find("[3]") != std::string::npos);
  error = ErrorOf([&] { client.Explain(ImageRequest("rise", {{"keep_probability", "1.5"}})); });
  CHECK(error.code() == grpc::StatusCode::INVALID_ARGUMENT && error.details().find("keep_probability") != std::string::npos);
  explaind::ClientOptions hurried;
  hurried.timeout = std::chrono::milliseconds(50);
  error = ErrorOf([&] { explaind::Client(state.at("plain"), hurried).Explain(ImageRequest("rise", {{"num_masks", "50000"}})); });
  CHECK(error.code() == grpc::StatusCode::DEADLINE_EXCEEDED || error.code() == grpc::StatusCode::RESOURCE_EXHAUSTED);
}

void RequestBuildingErrors() {
  v1::ExplainRequest request;
  std::string what = InvalidArgumentOf([&] { explaind::SetMethod(request, "nonsense"); });
  CHECK(what.rfind("ExplainRequest.method: expected one of occlusion, rise, lime,", 0) == 0);
  CHECK(what.find("got \"nonsense\"") != std::string::npos);
  what = InvalidArgumentOf([&] { explaind::SetMethod(request, "rise", {{"masks", "3"}}); });
  CHECK(what == "rise has no parameter \"masks\"; it has num_masks, grid_size, keep_probability, baseline");
  what = InvalidArgumentOf([&] { explaind::SetMethod(request, "rise", {{"num_masks", "3000000000"}}); });
  CHECK(what == "rise.num_masks: expected an int32, got \"3000000000\"");
  what = InvalidArgumentOf([&] { explaind::SetMethod(request, "extremal_perturbation", {{"jitter", "yes"}}); });
  CHECK(what == "extremal_perturbation.jitter: expected true or false, got \"yes\"");
  explaind::SetMethod(request, "extremal_perturbation", {{"areas", "0.05,0.1"}, {"variant", "dual"}});
  CHECK(request.extremal_perturbation().areas_size() == 2 && request.extremal_perturbation().variant() == "dual");
  CHECK(std::fabs(request.extremal_perturbation().areas(1) - 0.1f) < 1e-7);
  v1::Tensor tensor = explaind::FloatTensor({1.0f, -2.0f}, {2});
  CHECK(tensor.data() == std::string("\x00\x00\x80\x3f\x00\x00\x00\xc0", 8));
  tensor.mutable_data()->pop_back();
  what = InvalidArgumentOf([&] { explaind::FloatValues(tensor); });
  CHECK(what == "tensor.data: expected 8 bytes for shape [2] of FLOAT32, got 7 bytes");
  what = InvalidArgumentOf([&] { explaind::FloatTensor({1, 2, 3}, {2, 2}); });
  CHECK(what == "values: expected 4 for shape [2, 2], got 3");
}

void TlsAndToken() {
  explaind::ClientOptions options;
  options.root_certificates = explaind::ReadFile(state.at("ca"));
  options.timeout = std::chrono::seconds(30);
  auto error = ErrorOf([&] { explaind::Client(state.at("secure"), options).ListModels(); });
  CHECK(error.code() == grpc::StatusCode::UNAUTHENTICATED);
  options.token = state.at("token");
  CHECK(!explaind::Client(state.at("secure"), options).ListModels().empty());
  // by address, with the certificate's other name
  const std::string port = state.at("secure").substr(state.at("secure").find(':') + 1);
  options.server_name = "explaind.test";
  CHECK(!explaind::Client("127.0.0.1:" + port, options).ListModels().empty());
  options.server_name = "";
  options.root_certificates = "";
  options.tls = true;  // the system's CAs do not know the test CA
  CHECK(ErrorOf([&] { explaind::Client(state.at("secure"), options).ListModels(); }).code() == grpc::StatusCode::UNAVAILABLE);
  explaind::ClientOptions spaced;
  spaced.token = "a b";
  CHECK(InvalidArgumentOf([&] { explaind::Client("localhost:1", spaced); }) ==
        "token: expected visible ASCII characters without spaces");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: explaind_client_test STATE (written by server_fixture.py start)\n";
    return 2;
  }
  std::ifstream in(argv[1]);
  for (std::string line; std::getline(in, line);) {
    const auto equals = line.find('=');
    if (equals != std::string::npos) state[line.substr(0, equals)] = line.substr(equals + 1);
  }
  if (!state.count("plain")) {
    std::cerr << argv[1] << ": no servers (run server_fixture.py start first)\n";
    return 2;
  }
  const std::vector<std::pair<std::string, std::function<void()>>> tests = {
      {"lists models and methods", ListsModels},
      {"tabular occlusion equals p(x) - p(x_i = 0)", TabularOcclusionByHand},
      {"image explanation with a heatmap", ImageWithHeatmap},
      {"ExplainStream: progress, partial maps, Explain's result", StreamMatchesExplain},
      {"Evaluate: a given attribution scores as computed", EvaluateGivenEqualsComputed},
      {"server errors: status code and message", ServerErrors},
      {"request building errors", RequestBuildingErrors},
      {"TLS and bearer token", TlsAndToken},
  };
  int passed = 0, failed = 0;
  for (const auto& [name, test] : tests) {
    try {
      test();
      ++passed;
      std::cout << "ok: " << name << "\n";
    } catch (const Failure& failure) {
      ++failed;
      std::cout << "FAILED: " << name << ": " << failure.what << "\n";
    } catch (const std::exception& error) {
      ++failed;
      std::cout << "FAILED: " << name << ": " << error.what() << "\n";
    }
  }
  std::cout << passed << " passed, " << failed << " failed\n";
  return failed ? 1 : 0;
}
