#include "explaind/client.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/reflection.h>

namespace explaind {

namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

bool HostIsLittleEndian() {
  const uint16_t one = 1;
  unsigned char first;
  std::memcpy(&first, &one, 1);
  return first == 1;
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < shape.size() && i < 8; ++i) out << (i ? ", " : "") << shape[i];
  if (shape.size() > 8) out << ", ...] (" << shape.size() << " dimensions)";
  else out << "]";
  return out.str();
}

std::vector<std::string> Split(const std::string& text, char separator) {
  std::vector<std::string> parts;
  std::string part;
  std::istringstream in(text);
  while (std::getline(in, part, separator)) parts.push_back(part);
  if (!text.empty() && text.back() == separator) parts.push_back("");
  return parts;
}

std::string FieldNames(const Descriptor* message) {
  std::string names;
  for (int i = 0; i < message->field_count(); ++i) names += (i ? ", " : "") + message->field(i)->name();
  return names.empty() ? "none" : names;
}

// One text value as a field's type; std::invalid_argument names `where`, the type and the text.
void SetScalar(Message& message, const FieldDescriptor* field, const std::string& text, const std::string& where) {
  const Reflection* reflection = message.GetReflection();
  const bool repeated = field->is_repeated();
  auto fail = [&](const std::string& expected) {
    throw std::invalid_argument(where + ": expected " + expected + ", got \"" + text + "\"");
  };
  size_t used = 0;
  try {
    switch (field->cpp_type()) {
      case FieldDescriptor::CPPTYPE_INT32: {
        const long value = std::stol(text, &used);
        if (used != text.size() || value < INT32_MIN || value > INT32_MAX) fail("an int32");
        repeated ? reflection->AddInt32(&message, field, static_cast<int32_t>(value))
                 : reflection->SetInt32(&message, field, static_cast<int32_t>(value));
        return;
      }
      case FieldDescriptor::CPPTYPE_INT64: {
        const long long value = std::stoll(text, &used);
        if (used != text.size()) fail("an int64");
        repeated ? reflection->AddInt64(&message, field, value) : reflection->SetInt64(&message, field, value);
        return;
      }
      case FieldDescriptor::CPPTYPE_UINT64: {
        if (!text.empty() && text[0] == '-') fail("a uint64");
        const unsigned long long value = std::stoull(text, &used);
        if (used != text.size()) fail("a uint64");
        repeated ? reflection->AddUInt64(&message, field, value) : reflection->SetUInt64(&message, field, value);
        return;
      }
      case FieldDescriptor::CPPTYPE_FLOAT: {
        const float value = std::stof(text, &used);
        if (used != text.size() || !std::isfinite(value)) fail("a finite float");
        repeated ? reflection->AddFloat(&message, field, value) : reflection->SetFloat(&message, field, value);
        return;
      }
      case FieldDescriptor::CPPTYPE_DOUBLE: {
        const double value = std::stod(text, &used);
        if (used != text.size() || !std::isfinite(value)) fail("a finite double");
        repeated ? reflection->AddDouble(&message, field, value) : reflection->SetDouble(&message, field, value);
        return;
      }
      case FieldDescriptor::CPPTYPE_BOOL: {
        if (text != "true" && text != "false") fail("true or false");
        repeated ? reflection->AddBool(&message, field, text == "true")
                 : reflection->SetBool(&message, field, text == "true");
        return;
      }
      case FieldDescriptor::CPPTYPE_STRING:
        repeated ? reflection->AddString(&message, field, text) : reflection->SetString(&message, field, text);
        return;
      default:
        throw std::invalid_argument(where + ": a " + std::string(field->type_name()) +
                                    " field cannot be set from text");
    }
  } catch (const std::out_of_range&) {
    fail(std::string("a number in range for ") + field->type_name());
  } catch (const std::invalid_argument& error) {
    if (std::string(error.what()).rfind(where, 0) == 0) throw;  // ours, already worded
    fail(std::string("a number (") + field->type_name() + ")");
  }
}

// Sets oneof field `name` of `owner` (field `oneof` of a message) to a message whose fields are `params`.
void SetOneofMessage(Message& owner, const std::string& oneof, const std::string& name,
                     const std::map<std::string, std::string>& params) {
  const Descriptor* descriptor = owner.GetDescriptor();
  const google::protobuf::OneofDescriptor* group = descriptor->FindOneofByName(oneof);
  const FieldDescriptor* field = descriptor->FindFieldByName(name);
  if (group == nullptr || field == nullptr || field->containing_oneof() != group ||
      field->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE) {
    std::string known;
    for (int i = 0; group != nullptr && i < group->field_count(); ++i) known += (i ? ", " : "") + group->field(i)->name();
    throw std::invalid_argument(descriptor->name() + "." + oneof + ": expected one of " + known + ", got \"" + name + "\"");
  }
  Message* message = owner.GetReflection()->MutableMessage(&owner, field);
  message->Clear();
  const Descriptor* params_type = message->GetDescriptor();
  for (const auto& [key, text] : params) {
    const FieldDescriptor* param = params_type->FindFieldByName(key);
    if (param == nullptr) {
      throw std::invalid_argument(name + " has no parameter \"" + key + "\"; it has " + FieldNames(params_type));
    }
    const std::string where = name + "." + key;
    if (param->is_repeated()) {
      message->GetReflection()->ClearField(message, param);
      for (const std::string& item : Split(text, ',')) SetScalar(*message, param, item, where);
    } else {
      SetScalar(*message, param, text, where);
    }
  }
}

template <typename T>
std::vector<T> Values(const v1::Tensor& tensor, v1::DataType dtype) {
  if (tensor.dtype() != dtype) {
    throw std::invalid_argument("tensor.dtype: expected " + v1::DataType_Name(dtype) + ", got " +
                                (v1::DataType_IsValid(tensor.dtype()) ? v1::DataType_Name(tensor.dtype())
                                                                      : "unknown dtype " + std::to_string(tensor.dtype())));
  }
  std::vector<int64_t> shape(tensor.shape().begin(), tensor.shape().end());
  unsigned __int128 elements = 1;
  for (int64_t d : shape) {
    if (d < 0) throw std::invalid_argument("tensor.shape: expected non-negative dimensions, got " + ShapeText(shape));
    elements *= static_cast<uint64_t>(d);
    if (elements > (static_cast<unsigned __int128>(1) << 62)) {
      throw std::invalid_argument("tensor.shape: expected a shape whose element count fits in int64, got " + ShapeText(shape));
    }
  }
  const unsigned __int128 expected = elements * sizeof(T);
  if (tensor.data().size() != expected) {
    throw std::invalid_argument("tensor.data: expected " + std::to_string(static_cast<uint64_t>(expected)) +
                                " bytes for shape " + ShapeText(shape) + " of " + v1::DataType_Name(dtype) + ", got " +
                                std::to_string(tensor.data().size()) + " bytes");
  }
  std::vector<T> values(static_cast<size_t>(elements));
  std::memcpy(values.data(), tensor.data().data(), tensor.data().size());
  if (!HostIsLittleEndian()) {
    for (T& v : values) {
      auto* bytes = reinterpret_cast<unsigned char*>(&v);
      std::reverse(bytes, bytes + sizeof(T));
    }
  }
  return values;
}

}  // namespace

// ---------------------------------------------------------------------------------------------

std::string StatusCodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::UNKNOWN: return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED: return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL: return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS: return "DATA_LOSS";
    default: return "code " + std::to_string(static_cast<int>(code));
  }
}

Error::Error(const grpc::Status& status, std::optional<int64_t> retry_after_ms)
    : std::runtime_error(StatusCodeName(status.error_code()) + ": " + status.error_message()),
      code_(status.error_code()),
      details_(status.error_message()),
      retry_after_ms_(retry_after_ms) {}

std::string Error::code_name() const { return StatusCodeName(code_); }

namespace {

void Check(const grpc::Status& status, const grpc::ClientContext& context) {
  if (status.ok()) return;
  std::optional<int64_t> hint;
  const auto& trailers = context.GetServerTrailingMetadata();
  auto found = trailers.find("retry-after-ms");
  if (found != trailers.end()) {
    try {
      hint = std::stoll(std::string(found->second.data(), found->second.size()));
    } catch (const std::exception&) {
      // a malformed hint is no hint
    }
  }
  throw Error(status, hint);
}

}  // namespace

Client::Client(const std::string& target, ClientOptions options) : options_(std::move(options)) {
  if (options_.private_key.empty() != options_.certificate_chain.empty()) {
    throw std::invalid_argument("private_key and certificate_chain go together (the client certificate for mTLS)");
  }
  for (char c : options_.token) {
    if (c < 0x21 || c > 0x7e) throw std::invalid_argument("token: expected visible ASCII characters without spaces");
  }
  grpc::ChannelArguments arguments;
  arguments.SetMaxReceiveMessageSize(options_.max_message_bytes);
  arguments.SetMaxSendMessageSize(options_.max_message_bytes);
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (options_.tls || !options_.root_certificates.empty() || !options_.private_key.empty()) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options_.root_certificates;
    ssl.pem_private_key = options_.private_key;
    ssl.pem_cert_chain = options_.certificate_chain;
    credentials = grpc::SslCredentials(ssl);
    if (!options_.server_name.empty()) arguments.SetSslTargetNameOverride(options_.server_name);
  } else {
    credentials = grpc::InsecureChannelCredentials();
  }
  channel_ = grpc::CreateCustomChannel(target, credentials, arguments);
  stub_ = v1::Explainer::NewStub(channel_);
}

std::unique_ptr<grpc::ClientContext> Client::NewContext() const {
  auto context = std::make_unique<grpc::ClientContext>();
  if (options_.timeout.count() > 0) context->set_deadline(std::chrono::system_clock::now() + options_.timeout);
  if (!options_.token.empty()) context->AddMetadata("authorization", "Bearer " + options_.token);
  return context;
}

v1::ExplainResponse Client::Explain(const v1::ExplainRequest& request) const {
  auto context = NewContext();
  v1::ExplainResponse response;
  Check(stub_->Explain(context.get(), request, &response), *context);
  return response;
}

v1::ExplainResponse Client::ExplainStream(const v1::ExplainRequest& request,
                                          const std::function<void(const v1::Progress&)>& on_progress,
                                          const std::function<void(const v1::ExplainResponse&)>& on_partial) const {
  auto context = NewContext();
  auto reader = stub_->ExplainStream(context.get(), request);
  v1::ExplainUpdate update;
  std::optional<v1::ExplainResponse> result;
  try {
    while (reader->Read(&update)) {
      switch (update.kind_case()) {
        case v1::ExplainUpdate::kProgress:
          if (on_progress) on_progress(update.progress());
          break;
        case v1::ExplainUpdate::kPartial:
          if (on_partial) on_partial(update.partial());
          break;
        case v1::ExplainUpdate::kResult:
          result = std::move(*update.mutable_result());
          break;
        default:
          break;
      }
    }
  } catch (...) {  // a callback threw: cancel the call (the server stops its work), then rethrow
    context->TryCancel();
    while (reader->Read(&update)) {
    }
    reader->Finish();
    throw;
  }
  Check(reader->Finish(), *context);
  if (!result) throw std::runtime_error("ExplainStream ended without a result");
  return *result;
}

v1::EvaluateResponse Client::Evaluate(const v1::EvaluateRequest& request) const {
  auto context = NewContext();
  v1::EvaluateResponse response;
  Check(stub_->Evaluate(context.get(), request, &response), *context);
  return response;
}

std::vector<v1::ModelInfo> Client::ListModels() const {
  auto context = NewContext();
  v1::ListModelsResponse response;
  Check(stub_->ListModels(context.get(), v1::ListModelsRequest(), &response), *context);
  return {response.models().begin(), response.models().end()};
}

v1::ModelInfo Client::GetModel(const std::string& name) const {
  auto context = NewContext();
  v1::GetModelRequest request;
  request.set_name(name);
  v1::ModelInfo response;
  Check(stub_->GetModel(context.get(), request, &response), *context);
  return response;
}

std::vector<v1::MethodInfo> Client::ListMethods(const std::string& model) const {
  auto context = NewContext();
  v1::ListMethodsRequest request;
  request.set_model(model);
  v1::ListMethodsResponse response;
  Check(stub_->ListMethods(context.get(), request, &response), *context);
  return {response.methods().begin(), response.methods().end()};
}

// ---------------------------------------------------------------------------------------------

void SetMethod(v1::ExplainRequest& request, const std::string& method, const std::map<std::string, std::string>& params) {
  SetOneofMessage(request, "method", method, params);
}

void AddMetric(google::protobuf::RepeatedPtrField<v1::Metric>& metrics, const std::string& metric,
               const std::map<std::string, std::string>& params) {
  v1::Metric built;
  SetOneofMessage(built, "metric", metric, params);
  *metrics.Add() = std::move(built);
}

v1::Tensor FloatTensor(const std::vector<float>& values, const std::vector<int64_t>& shape) {
  int64_t elements = 1;
  for (int64_t d : shape) {
    if (d < 0) throw std::invalid_argument("shape: expected non-negative dimensions, got " + ShapeText(shape));
    elements *= d;
  }
  if (static_cast<size_t>(elements) != values.size()) {
    throw std::invalid_argument("values: expected " + std::to_string(elements) + " for shape " + ShapeText(shape) +
                                ", got " + std::to_string(values.size()));
  }
  v1::Tensor tensor;
  tensor.set_dtype(v1::FLOAT32);
  for (int64_t d : shape) tensor.add_shape(d);
  std::string bytes(values.size() * sizeof(float), '\0');
  std::memcpy(bytes.data(), values.data(), bytes.size());
  if (!HostIsLittleEndian()) {
    for (size_t i = 0; i < bytes.size(); i += 4) std::reverse(bytes.begin() + i, bytes.begin() + i + 4);
  }
  tensor.set_data(std::move(bytes));
  return tensor;
}

std::vector<float> FloatValues(const v1::Tensor& tensor) { return Values<float>(tensor, v1::FLOAT32); }

std::vector<int32_t> Int32Values(const v1::Tensor& tensor) { return Values<int32_t>(tensor, v1::INT32); }

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot read it (" + std::strerror(errno) + ")");
  std::ostringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out || !out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()))) {
    throw std::runtime_error(path + ": cannot write it (" + std::strerror(errno) + ")");
  }
}

}  // namespace explaind
