// explaind's C++ client: a small wrapper over the stubs generated from proto/explaind/v1 at build time
// (the generated types are used as they are: explaind::v1::ExplainRequest, ExplainResponse...).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "explaind/v1/explaind.grpc.pb.h"
#include "explaind/v1/explaind.pb.h"

namespace explaind {

namespace v1 = ::explaind::v1;

// A failed call: the gRPC status, the server's message (it names the field, the expected and the
// received) and the `retry-after-ms` hint a RESOURCE_EXHAUSTED refusal may carry.
class Error : public std::runtime_error {
 public:
  Error(const grpc::Status& status, std::optional<int64_t> retry_after_ms);
  grpc::StatusCode code() const { return code_; }
  // "NOT_FOUND", "INVALID_ARGUMENT"...
  std::string code_name() const;
  const std::string& details() const { return details_; }
  std::optional<int64_t> retry_after_ms() const { return retry_after_ms_; }

 private:
  grpc::StatusCode code_;
  std::string details_;
  std::optional<int64_t> retry_after_ms_;
};

// The name of a gRPC status code as the proto's comments write it.
std::string StatusCodeName(grpc::StatusCode code);

struct ClientOptions {
  // Deadline of every call; zero: none.
  std::chrono::milliseconds timeout{0};
  // Sent as `authorization: Bearer TOKEN` on every call (as call metadata: over plaintext too, which is
  // fine on loopback; gRPC's call credentials would refuse an insecure channel).
  std::string token;
  // TLS, verifying the server with the system's CAs, or with `root_certificates` (PEM) when given.
  bool tls = false;
  std::string root_certificates;
  // PEM client key and certificate chain, for mTLS (together; they imply TLS).
  std::string private_key;
  std::string certificate_chain;
  // The name the server's certificate carries, when it is not the host connected to.
  std::string server_name;
  int max_message_bytes = 64 << 20;
};

// Blocking client; thread-safe (one channel, a context per call). Every call throws explaind::Error.
class Client {
 public:
  explicit Client(const std::string& target = "localhost:50051", ClientOptions options = {});

  v1::ExplainResponse Explain(const v1::ExplainRequest& request) const;
  // ExplainStream: on_progress and on_partial (sampling methods' maps from the rows so far) as the
  // updates come, then the result, the same as Explain's.
  v1::ExplainResponse ExplainStream(const v1::ExplainRequest& request,
                                    const std::function<void(const v1::Progress&)>& on_progress = {},
                                    const std::function<void(const v1::ExplainResponse&)>& on_partial = {}) const;
  v1::EvaluateResponse Evaluate(const v1::EvaluateRequest& request) const;
  std::vector<v1::ModelInfo> ListModels() const;
  v1::ModelInfo GetModel(const std::string& name) const;
  // With `model`, only the methods it supports.
  std::vector<v1::MethodInfo> ListMethods(const std::string& model = "") const;

  // The generated stub, for the RPCs the wrapper does not cover (LoadModel, ListMetrics...); give it a
  // context from NewContext() so that it carries the token and the deadline.
  v1::Explainer::Stub& stub() const { return *stub_; }
  std::unique_ptr<grpc::ClientContext> NewContext() const;

 private:
  ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Explainer::Stub> stub_;
};

// ---------------------------------------------------------------------------------------------
// Building requests from plain values

// Sets the request's method (the ExplainRequest oneof field `method`, e.g. "rise", "kernel_shap") with
// parameters given as text, as the CLI's --param NAME=VALUE: numbers, true/false, strings, and
// comma-separated lists for repeated fields ("window" -> "8,8"). Throws std::invalid_argument naming
// the method or parameter, what was expected and what came.
void SetMethod(v1::ExplainRequest& request, const std::string& method,
               const std::map<std::string, std::string>& params = {});

// Adds a metric (a field of the Metric oneof, e.g. "deletion") with text parameters, as SetMethod.
void AddMetric(google::protobuf::RepeatedPtrField<v1::Metric>& metrics, const std::string& metric,
               const std::map<std::string, std::string>& params = {});

// A float32 Tensor (little-endian, C order) of `shape`; throws std::invalid_argument when the element
// count does not match the shape.
v1::Tensor FloatTensor(const std::vector<float>& values, const std::vector<int64_t>& shape);

// The values of a FLOAT32 Tensor; throws std::invalid_argument naming the dtype, shape or byte length
// that is wrong.
std::vector<float> FloatValues(const v1::Tensor& tensor);

// The values of an INT32 Tensor (lime's and kernel_shap's `segments`), checked as FloatValues.
std::vector<int32_t> Int32Values(const v1::Tensor& tensor);

// A file's bytes; throws std::runtime_error naming the path when it cannot be read.
std::string ReadFile(const std::string& path);
void WriteFile(const std::string& path, const std::string& bytes);

}  // namespace explaind
