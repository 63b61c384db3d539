// swiftvr.hpp: header-only C++17 RAII wrapper of swiftvr.h. Failures throw swiftvr::Error (with the
// C status and the runtime's message); the C ABI underneath never throws.
//
//   swiftvr::Model model("engines/360p.plan");
//   swiftvr::Session session(model);                          // one per stream, any thread
//   std::vector<uint8_t> out;
//   session.push(rgb.data(), frames, width, height);          // RGB24 frames back to back
//   session.receive(out);                                     // appends what is ready
//   session.flush();  session.receive(out);
//   // or: session.on_frames([&](const uint8_t *rgb, size_t n, uint64_t first) { write(rgb, n); });
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "swiftvr.h"

namespace swiftvr {

class Error : public std::runtime_error {
public:
    Error(swiftvr_status status, const std::string &message) : std::runtime_error(message), status_(status) {}
    swiftvr_status status() const noexcept { return status_; }

private:
    swiftvr_status status_;
};

inline void check(swiftvr_status status) {
    if (status != SWIFTVR_OK)
        throw Error(status, swiftvr_last_error());
}

struct Size {
    int width = 0, height = 0;
    std::size_t rgb_bytes() const { return static_cast<std::size_t>(width) * height * 3; }
};

struct ModelOptions {
    std::string backend, device;   // empty: from the bundle / the backend's choice
    int threads = 0;               // 0: one per core
    bool verify = true;
};

class Model {
public:
    explicit Model(const std::string &path, const ModelOptions &options = {}) {
        swiftvr_model_options o;
        swiftvr_model_options_init(&o);
        o.backend = options.backend.empty() ? nullptr : options.backend.c_str();
        o.device = options.device.empty() ? nullptr : options.device.c_str();
        o.threads = options.threads;
        o.verify = options.verify ? 1 : 0;
        check(swiftvr_model_open(path.c_str(), &o, &model_));
    }
    ~Model() { swiftvr_model_free(model_); }
    Model(const Model &) = delete;
    Model &operator=(const Model &) = delete;
    Model(Model &&other) noexcept : model_(std::exchange(other.model_, nullptr)) {}
    Model &operator=(Model &&other) noexcept {
        std::swap(model_, other.model_);
        return *this;
    }

    Size input_size() const {
        Size s;
        check(swiftvr_model_input_size(model_, &s.width, &s.height));
        return s;
    }
    Size output_size() const {
        Size s;
        check(swiftvr_model_output_size(model_, &s.width, &s.height));
        return s;
    }
    int clip_len() const {
        int n = 0;
        check(swiftvr_model_clip_len(model_, &n));
        return n;
    }
    std::string describe() const { return swiftvr_model_describe(model_); }
    swiftvr_model *get() const noexcept { return model_; }

private:
    swiftvr_model *model_ = nullptr;
};

struct SessionOptions {
    int in_flight = 0;     // 0: the model's default
    int overlap = -1;      // -1: when in_flight > 1
    bool resize = false;
};

class Session {
public:
    explicit Session(Model &model, const SessionOptions &options = {}) : output_(model.output_size()) {
        swiftvr_session_options o;
        swiftvr_session_options_init(&o);
        o.in_flight = options.in_flight;
        o.overlap = options.overlap;
        o.resize = options.resize ? 1 : 0;
        check(swiftvr_session_open(model.get(), &o, &session_));
    }
    ~Session() { swiftvr_session_free(session_); }
    Session(const Session &) = delete;
    Session &operator=(const Session &) = delete;
    Session(Session &&other) noexcept
        : session_(std::exchange(other.session_, nullptr)), output_(other.output_),
          callback_(std::move(other.callback_)) {}
    Session &operator=(Session &&other) noexcept {
        std::swap(session_, other.session_);
        std::swap(output_, other.output_);
        std::swap(callback_, other.callback_);
        return *this;
    }

    using FramesFn = std::function<void(const std::uint8_t *frames, std::size_t count, std::uint64_t first)>;

    // Restored frames go to `fn` (on the thread that pushes) instead of the queue. An exception
    // it throws is caught at the C boundary and rethrown by the push()/flush() that called it.
    void on_frames(FramesFn fn) {
        callback_ = std::make_unique<Callback>(Callback{std::move(fn), nullptr});
        check(swiftvr_session_set_callback(session_, callback_->fn ? &Session::trampoline : nullptr,
                                           callback_.get()));
    }

    void push(const std::uint8_t *frames, std::size_t count, int width, int height,
              swiftvr_format format = SWIFTVR_RGB24) {
        swiftvr_status status = swiftvr_session_push(session_, frames, count, width, height, format);
        rethrow_callback_error();
        check(status);
    }
    void flush() {
        swiftvr_status status = swiftvr_session_flush(session_);
        rethrow_callback_error();
        check(status);
    }
    void close() { check(swiftvr_session_close(session_)); }
    std::size_t ready() const noexcept { return swiftvr_session_ready(session_); }

    // Appends every queued restored frame (RGB24, output size) to `out`; returns how many.
    std::size_t receive(std::vector<std::uint8_t> &out) {
        std::size_t count = ready(), got = 0;
        std::size_t at = out.size();
        out.resize(at + count * output_.rgb_bytes());
        check(swiftvr_session_receive(session_, out.data() + at, count, &got));
        out.resize(at + got * output_.rgb_bytes());
        return got;
    }

    Size output_size() const noexcept { return output_; }
    swiftvr_session *get() const noexcept { return session_; }

private:
    struct Callback {
        FramesFn fn;
        std::exception_ptr error;
    };

    static void trampoline(void *user, const std::uint8_t *frames, std::size_t count, std::uint64_t first) {
        auto *callback = static_cast<Callback *>(user);
        if (callback->error)
            return;                       // the first failure stops delivery until it is rethrown
        try {
            callback->fn(frames, count, first);
        } catch (...) {
            callback->error = std::current_exception();
        }
    }

    void rethrow_callback_error() {
        if (callback_ && callback_->error)
            std::rethrow_exception(std::exchange(callback_->error, nullptr));
    }

    swiftvr_session *session_ = nullptr;
    Size output_;
    std::unique_ptr<Callback> callback_;  // on the heap: its address is what the C side keeps
};

}  // namespace swiftvr
