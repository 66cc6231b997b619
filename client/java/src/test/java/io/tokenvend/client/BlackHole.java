package io.tokenvend.client;

import java.io.IOException;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;

/** An unresponsive tokenvend: a loopback listener that accepts connections and never answers. */
final class BlackHole implements AutoCloseable {
  private final ServerSocket listener;
  private final List<Socket> held = new CopyOnWriteArrayList<>();

  BlackHole() throws IOException {
    listener = new ServerSocket(0, 50, InetAddress.getLoopbackAddress());
    Thread t =
        new Thread(
            () -> {
              try {
                while (true) {
                  held.add(listener.accept()); // never read, never written
                }
              } catch (IOException closed) {
                // close() ends the loop
              }
            },
            "black-hole");
    t.setDaemon(true);
    t.start();
  }

  String target() {
    return "127.0.0.1:" + listener.getLocalPort();
  }

  int accepted() {
    return held.size();
  }

  @Override
  public void close() throws IOException {
    hangUp();
  }

  /** Stops listening and drops every connection, so that RPCs on them end at once. */
  void hangUp() throws IOException {
    listener.close();
    for (Socket s : held) {
      s.close();
    }
  }
}
