/*
 * Vendored unmodified from Microsoft Machnet:
 *   repository  https://github.com/microsoft/machnet
 *   path        examples/hello_world.cc
 *   commit      2a8a4f06dbd224391461194ffbab308eb782800d (last change to the file; read at
 *               main 877397b94d3131e5e76f0b25b6f2bb5d8a82308f)
 *   git blob    ed34735227a65333ccfe05172b76d5ea987e60f0 (ci/ffi.sh checks that everything
 *               after the end marker below hashes to it, i.e. is byte for byte the original)
 *   license     MIT (the repository's LICENSE; the file itself carries no license header):
 *
 *   MIT License
 *
 *   Copyright (c) Microsoft Corporation.
 *
 *   Permission is hereby granted, free of charge, to any person obtaining a copy
 *   of this software and associated documentation files (the "Software"), to deal
 *   in the Software without restriction, including without limitation the rights
 *   to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
 *   copies of the Software, and to permit persons to whom the Software is
 *   furnished to do so, subject to the following conditions:
 *
 *   The above copyright notice and this permission notice shall be included in all
 *   copies or substantial portions of the Software.
 *
 *   THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
 *   IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
 *   FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
 *   AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
 *   LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
 *   OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
 *   SOFTWARE.
 *
 * It must compile against machnet-ffi/include/machnet.h and link against libmachnet_shim.so
 * as the original's examples/Makefile builds it (c++ ... -lmachnet_shim); ci/ffi.sh does so,
 * with shim/gflags/gflags.h standing in for gflags (the two gflags calls it makes; gflags is
 * not a dependency of ours), and runs a server and two clients on its test sidecars.
 */
/* ===== end of the vendoring note: the original file follows, unmodified ===== */
/**
 * @file main.cc
 * Simple hello world application using only Machnet public APIs
 * Usage:
 *  - First start the server: ./hello_world --local=<local IP>
 *  - Client:
 *    ./hello_world --local=<local IP> --remote=<server IP> --is_client=1
 */

#include <gflags/gflags.h>
#include <machnet.h>

#include <array>

DEFINE_string(local, "", "Local IP address");
DEFINE_string(remote, "", "Remote IP address");

static constexpr uint16_t kPort = 31580;

// assert with message
void assert_with_msg(bool cond, const char *msg) {
  if (!cond) {
    printf("%s\n", msg);
    exit(-1);
  }
}

int main(int argc, char *argv[]) {
  gflags::ParseCommandLineFlags(&argc, &argv, true);

  int ret = machnet_init();
  assert_with_msg(ret == 0, "machnet_init() failed");

  void *channel = machnet_attach();
  assert_with_msg(channel != nullptr, "machnet_attach() failed");

  ret = machnet_listen(channel, FLAGS_local.c_str(), kPort);
  assert_with_msg(ret == 0, "machnet_listen() failed");

  printf("Listening on %s:%d\n", FLAGS_local.c_str(), kPort);

  if (FLAGS_remote != "") {
    printf("Sending message to %s:%d\n", FLAGS_remote.c_str(), kPort);
    MachnetFlow flow;
    std::string msg = "Hello World!";
    ret = machnet_connect(channel, FLAGS_local.c_str(), FLAGS_remote.c_str(),
                          kPort, &flow);
    assert_with_msg(ret == 0, "machnet_connect() failed");

    const int ret = machnet_send(channel, flow, msg.data(), msg.size());
    if (ret == -1) printf("machnet_send() failed\n");
  } else {
    printf("Waiting for message from client\n");
    size_t count = 0;

    while (true) {
      std::array<char, 1024> buf;
      MachnetFlow flow;
      const ssize_t ret = machnet_recv(channel, buf.data(), buf.size(), &flow);
      assert_with_msg(ret >= 0, "machnet_recvmsg() failed");
      if (ret == 0) {
        usleep(10);
        continue;
      }

      std::string msg(buf.data(), ret);
      printf("Received message: %s, count = %zu\n", msg.c_str(), count++);
    }
  }

  return 0;
}
