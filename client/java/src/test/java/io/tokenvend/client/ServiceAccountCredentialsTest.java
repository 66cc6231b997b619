package io.tokenvend.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.FileTime;
import java.time.Duration;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class ServiceAccountCredentialsTest {
  @Test
  void rereadsWhenTheFileChangesAndEveryMinute(@TempDir Path dir) throws Exception {
    Path file = dir.resolve("token");
    Files.writeString(file, "one\n");
    FileTime mtime = Files.getLastModifiedTime(file);
    MutableClock clock = new MutableClock();
    ServiceAccountCredentials creds = new ServiceAccountCredentials(file, clock);

    assertEquals("one", creds.current());

    // Rotated with a new modification time: read at once.
    Files.writeString(file, "two");
    Files.setLastModifiedTime(file, FileTime.fromMillis(mtime.toMillis() + 1000));
    assertEquals("two", creds.current());

    // Rotated keeping the modification time: read once the minute has passed.
    FileTime same = Files.getLastModifiedTime(file);
    Files.writeString(file, "three");
    Files.setLastModifiedTime(file, same);
    assertEquals("two", creds.current());
    clock.advance(Duration.ofSeconds(61));
    assertEquals("three", creds.current());

    // Briefly missing mid-rotation: the last token is kept.
    Files.delete(file);
    assertEquals("three", creds.current());
  }

  @Test
  void refusesAnOversizedFile(@TempDir Path dir) throws Exception {
    Path file = dir.resolve("token");
    Files.write(file, new byte[ServiceAccountCredentials.MAX_BYTES + 1]);
    ServiceAccountCredentials creds = new ServiceAccountCredentials(file, new MutableClock());

    IOException e = assertThrows(IOException.class, creds::current);
    assertTrue(e.getMessage().contains("larger than"), e.getMessage());
  }
}
