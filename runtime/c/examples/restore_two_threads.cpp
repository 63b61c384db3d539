// restore_two_threads: two streams restored at once, one swiftvr::Session per thread, one Model.
//
//   restore_two_threads MODEL WxH A.rgb A.out.rgb B.rgb B.out.rgb [--one-thread]
//
// Each input is a file of raw RGB24 frames of WxH; each output gets the restored RGB24 frames
// (written by the session's callback as chunks finish). --one-thread restores A then B on the
// main thread: the bytes must be the same. Prints one line per stream to stderr.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "swiftvr.hpp"

namespace {

std::vector<std::uint8_t> read_file(const std::string &path) {
    std::ifstream in(path, std::ios::binary);
    if (!in)
        throw std::runtime_error("cannot read " + path);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Restores `input_path` into `output_path` with its own session, pushing `batch` frames at a time.
void restore(swiftvr::Model &model, swiftvr::Size size, const std::string &input_path,
             const std::string &output_path, std::string &report) {
    std::vector<std::uint8_t> input = read_file(input_path);
    std::size_t frame = size.rgb_bytes(), count = input.size() / frame;
    if (count * frame != input.size())
        throw std::runtime_error(input_path + " does not hold whole " + std::to_string(size.width) + "x" +
                                 std::to_string(size.height) + " RGB24 frames");
    std::ofstream output(output_path, std::ios::binary);
    std::size_t written = 0;
    swiftvr::Session session(model);
    session.on_frames([&](const std::uint8_t *frames, std::size_t n, std::uint64_t) {
        output.write(reinterpret_cast<const char *>(frames), static_cast<std::streamsize>(n * session.output_size().rgb_bytes()));
        written += n;
    });
    auto start = std::chrono::steady_clock::now();
    const std::size_t batch = 4;
    for (std::size_t at = 0; at < count; at += batch)
        session.push(input.data() + at * frame, std::min(batch, count - at), size.width, size.height);
    session.flush();
    std::chrono::duration<double> seconds = std::chrono::steady_clock::now() - start;
    if (!output)
        throw std::runtime_error("cannot write " + output_path);
    report = input_path + ": " + std::to_string(written) + " frames in " + std::to_string(seconds.count()) + " s";
}

}  // namespace

int main(int argc, char **argv) {
    if (argc < 7) {
        std::cerr << "usage: " << argv[0] << " MODEL WxH A.rgb A.out.rgb B.rgb B.out.rgb [--one-thread]\n";
        return 2;
    }
    bool one_thread = argc > 7 && std::string(argv[7]) == "--one-thread";
    try {
        swiftvr::Size size;
        if (std::sscanf(argv[2], "%dx%d", &size.width, &size.height) != 2)
            throw std::runtime_error("the frame size must look like WIDTHxHEIGHT");
        swiftvr::Model model(argv[1]);
        std::cerr << "model: " << model.describe() << "\n";
        std::string reports[2];
        std::exception_ptr errors[2];
        auto stream = [&](int i) {
            try {
                restore(model, size, argv[3 + 2 * i], argv[4 + 2 * i], reports[i]);
            } catch (...) {
                errors[i] = std::current_exception();
            }
        };
        if (one_thread) {
            stream(0);
            stream(1);
        } else {
            std::thread a(stream, 0), b(stream, 1);
            a.join();
            b.join();
        }
        for (int i = 0; i < 2; i++) {
            if (errors[i])
                std::rethrow_exception(errors[i]);
            std::cerr << reports[i] << "\n";
        }
    } catch (const swiftvr::Error &e) {
        std::cerr << "error: " << e.what() << " (status " << e.status() << ")\n";
        return 1;
    } catch (const std::exception &e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
