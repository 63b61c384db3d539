// restore_two_threads: two streams restored at once, one swiftvr::Session per thread, one Model.
//
//   restore_two_threads MODEL WxH A.rgb A.out.rgb B.rgb B.out.rgb [--one-thread]
//
// Each input is a file of raw RGB24 frames of WxH; each output gets the restored RGB24 frames
// (written by the session's callback as chunks finish). --one-thread restores A then B on the
// main thread: the bytes must be the same. Prints one line per stream to stderr.
// Exit status 0; 1 with "error: <message>" on stderr; 2 bad arguments (WxH not a size, or not the
// model's input size; an argument other than --one-thread): nothing read or written.
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "swiftvr.hpp"

namespace {

// The frame size "WxH" into `size`: whole numbers from 1 to INT_MAX, no sign, space or anything
// after them (sscanf("%dx%d") took "17x16x" and "0x16", and overflowed silently).
bool parse_size(const char *text, swiftvr::Size &size) {
    int *parts[] = {&size.width, &size.height};
    for (int i = 0; i < 2; i++) {
        char *end;
        if (!std::isdigit(static_cast<unsigned char>(*text)))
            return false;
        errno = 0;
        long number = std::strtol(text, &end, 10);
        if (errno == ERANGE || number < 1 || number > INT_MAX || *end != (i == 0 ? 'x' : '\0'))
            return false;
        *parts[i] = static_cast<int>(number);
        text = end + 1;
    }
    return true;
}

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
    // Anything after the files must be --one-thread: a misspelt one used to run on two threads.
    for (int i = 7; i < argc; i++) {
        if (std::string(argv[i]) != "--one-thread") {
            std::cerr << "error: unknown argument " << argv[i] << " (the only option is --one-thread)\n";
            return 2;
        }
    }
    bool one_thread = argc > 7;
    swiftvr::Size size;
    if (!parse_size(argv[2], size)) {
        std::cerr << "error: the frame size must look like WIDTHxHEIGHT, e.g. 480x270, got " << argv[2] << "\n";
        return 2;
    }
    try {
        swiftvr::Model model(argv[1]);
        // Checked before any file is read or written: other sizes would fail at the first push.
        swiftvr::Size takes = model.input_size();
        if (size.width != takes.width || size.height != takes.height) {
            std::cerr << "error: the frames are " << argv[2] << ", but " << argv[1] << " takes " << takes.width << "x"
                      << takes.height << " frames (restore_two_threads does not resize)\n";
            return 2;
        }
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
