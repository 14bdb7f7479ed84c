// A camera swarm in C++: N open-loop cameras, each on its own gRPC connection, pushing
// JPEG frames on a fixed clock and timing every prediction that comes back.
//
// bench/load.py runs it in place of its Python cameras where it builds (`--swarm`). It
// does the same at about half their CPU: at 100 cameras the Python ones use a third of a
// core, this a sixth, and on a 2-core machine that CPU is taken from the server under
// test. Real cameras are other machines. It prints the JSON object the Python cameras
// print; it is written from the .proto alone, so it is also a client independent of ours.
//
//   cameras TARGET CAMERAS FPS SECONDS FRAME.jpg...

#include <grpcpp/grpcpp.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <exception>
#include <fstream>
#include <iterator>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "actionstream/v1/actionstream.grpc.pb.h"

namespace pb = actionstream::v1;
using Clock = std::chrono::system_clock;

namespace {

constexpr double kDrainSeconds = 1.0;  // after the last frame: how long answers may still arrive

double Now() { return std::chrono::duration<double>(Clock::now().time_since_epoch()).count(); }

void SleepUntil(double when) {
  const double delay = when - Now();
  if (delay > 0) std::this_thread::sleep_for(std::chrono::duration<double>(delay));
}

double CpuSeconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& t) { return t.tv_sec + t.tv_usec / 1e6; };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

// One camera: one channel, one StreamFrames call. gRPC runs the callbacks on its own
// threads; the scheduler thread starts writes. At most one write is in flight, so a frame
// that falls due while the previous one is still being written is not sent, as a camera
// with no queue would lose it. A hold keeps the call from finishing (OnDone) while the
// scheduler may still start a write on it, even if the server ends the call early.
class Camera : public grpc::ClientBidiReactor<pb::FrameRequest, pb::Prediction> {
 public:
  Camera(int index, const std::string& target, double t0) : t0_(t0) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // a connection per camera
    args.SetMaxReceiveMessageSize(-1);
    channel_ = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
    stub_ = pb::ActionRecognition::NewStub(channel_);
    stub_->async()->StreamFrames(&context_, this);
    request_.mutable_options()->set_stream_name("cam-" + std::to_string(index));
    writing_ = true;
    StartWrite(&request_);
    StartRead(&prediction_);
    AddHold();  // released by Cancel(), once the scheduler is done with this camera
    StartCall();
  }

  // From the scheduler thread: sends the frame due at `due`, or counts it as lost.
  void Send(const std::string& jpeg, uint64_t sequence, double due) {
    if (writing_.exchange(true)) {
      ++unsent;
      return;
    }
    late_send_ms = std::max(late_send_ms, (Now() - due) * 1e3);
    request_.Clear();
    pb::Frame* frame = request_.mutable_frame();
    frame->set_encoded(jpeg);
    frame->set_sequence(sequence);
    frame->set_timestamp_us(static_cast<int64_t>(due * 1e6));
    StartWrite(&request_);
  }

  void Cancel() {
    context_.TryCancel();
    RemoveHold();
  }

  void WaitDone() {
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [this] { return done_.load(); });
  }

  void OnWriteDone(bool ok) override {
    if (ok) {
      if (sent_options_) ++sent;
      sent_options_ = true;
      writing_ = false;
    } else if (sent_options_) {
      ++unsent;  // the call is over; writing_ stays set, so the rest count as unsent too
    }
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;
    const double now = Now();
    ++answered;
    skipped += prediction_.skipped_frames();
    latencies.emplace_back(now - t0_, (now * 1e6 - prediction_.timestamp_us()) / 1e3);
    StartRead(&prediction_);
  }

  void OnDone(const grpc::Status& status) override {
    code = status.error_code();
    std::lock_guard<std::mutex> lock(mu_);
    done_ = true;
    done_cv_.notify_all();
  }

  // Read by the main thread once the call is done.
  int sent = 0;
  std::atomic<int> unsent{0};  // counted by the scheduler and by OnWriteDone
  int answered = 0;
  int skipped = 0;
  double late_send_ms = 0;
  grpc::StatusCode code = grpc::StatusCode::OK;
  std::vector<std::pair<double, double>> latencies;  // (s since t0, capture -> answer ms)

 private:
  double t0_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<pb::ActionRecognition::Stub> stub_;
  grpc::ClientContext context_;
  pb::FrameRequest request_;
  pb::Prediction prediction_;
  std::atomic<bool> writing_{false};
  bool sent_options_ = false;
  std::atomic<bool> done_{false};
  std::mutex mu_;
  std::condition_variable done_cv_;
};

std::string ReadFile(const char* path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "cameras: cannot read %s\n", path);
    std::exit(2);
  }
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 6) {
    std::fprintf(stderr, "usage: %s TARGET CAMERAS FPS SECONDS FRAME.jpg...\n", argv[0]);
    return 2;
  }
  const std::string target = argv[1];
  int cameras = 0;
  double fps = 0, seconds = 0;
  try {
    cameras = std::stoi(argv[2]);
    fps = std::stod(argv[3]);
    seconds = std::stod(argv[4]);
  } catch (const std::exception&) {
    cameras = 0;
  }
  auto positive = [](double x) { return x > 0 && std::isfinite(x); };
  if (cameras <= 0 || !positive(fps) || !positive(seconds)) {
    std::fprintf(stderr, "cameras: CAMERAS, FPS and SECONDS must be positive, got %s %s %s\n",
                 argv[2], argv[3], argv[4]);
    return 2;
  }
  std::vector<std::string> jpegs;
  for (int i = 5; i < argc; ++i) jpegs.push_back(ReadFile(argv[i]));

  const double t0 = Now() + 1.0;  // every camera connected before the clock starts
  const double cpu0 = CpuSeconds();
  std::vector<std::unique_ptr<Camera>> swarm;
  for (int i = 0; i < cameras; ++i) swarm.push_back(std::make_unique<Camera>(i, target, t0));

  // Every frame of every camera in the order they fall due; cameras spread over the
  // period as the Python cameras are.
  const double period = 1.0 / fps;
  const int total = static_cast<int>(seconds * fps);
  std::vector<std::pair<double, int>> order;
  for (int i = 0; i < cameras; ++i) order.emplace_back((i % 97) / 97.0 * period, i);
  std::sort(order.begin(), order.end());
  for (int k = 0; k < total; ++k) {
    for (const auto& [offset, i] : order) {
      const double due = t0 + offset + k * period;
      SleepUntil(due);
      swarm[i]->Send(jpegs[k % jpegs.size()], k + 1, due);
    }
  }
  SleepUntil(t0 + seconds + kDrainSeconds);
  for (auto& camera : swarm) camera->Cancel();
  for (auto& camera : swarm) camera->WaitDone();
  const double cpu = CpuSeconds() - cpu0;

  long sent = 0, unsent = 0, answered = 0, skipped = 0, refused = 0;
  double late = 0;
  for (const auto& c : swarm) {
    sent += c->sent;
    unsent += c->unsent;
    answered += c->answered;
    skipped += c->skipped;
    late = std::max(late, c->late_send_ms);
    refused += c->code == grpc::StatusCode::RESOURCE_EXHAUSTED;
  }
  std::printf(
      "{\"sent\": %ld, \"unsent\": %ld, \"answered\": %ld, \"skipped\": %ld, "
      "\"late_send_ms\": %.3f, \"refused\": %ld, \"cpu_s\": %.4f, \"latencies\": [",
      sent, unsent, answered, skipped, late, refused, cpu);
  const char* sep = "";
  for (const auto& c : swarm) {
    for (const auto& [t, ms] : c->latencies) {
      std::printf("%s[%.6f, %.3f]", sep, t, ms);
      sep = ", ";
    }
  }
  std::printf("]}\n");
  return 0;
}
