import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.IdentityHashMap;
import java.util.List;
import java.util.Optional;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.UUID;
import java.util.concurrent.CompletionException;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.CloseOptions;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.KafkaException;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.AuthenticationException;
import org.apache.kafka.common.errors.ClusterAuthorizationException;
import org.apache.kafka.common.errors.SaslAuthenticationException;
import org.apache.kafka.common.errors.SslAuthenticationException;
import org.apache.kafka.common.errors.TopicAuthorizationException;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * Proves that a Kafka client configuration works against a real broker.
 *
 * <pre>
 * java -cp LIBS/*:TOOL_DIR KafkaCheck roundtrip CLIENT_PROPERTIES TOPIC [--set key=value]...
 * </pre>
 *
 * Loads the properties file the way Kafka's own command-line tools do, applies the overrides,
 * makes sure the topic exists, produces one record and reads it back by offset. Every network
 * timeout is capped so a broken configuration fails within seconds.
 *
 * <p>Prints one line to stdout. On success {@code OK topic=T partition=P offset=O} and exit 0;
 * otherwise {@code FAIL <ExceptionClass>: <message>} and exit
 * 2 for a SASL authentication failure: SaslAuthenticationException (bad credentials) or
 *   another AuthenticationException such as UnsupportedSaslMechanismException,
 * 3 for SslAuthenticationException (TLS handshake, e.g. an untrusted certificate),
 * 1 for anything else (e.g. TimeoutException for a plaintext client on a TLS port),
 * 64 for a usage error.
 */
public final class KafkaCheck {
    private static final long STEP_TIMEOUT_MS = 20_000;
    /** A last resort in case some client call ignores its timeouts. */
    private static final long OVERALL_TIMEOUT_MS = 75_000;

    /** Upper bounds applied on top of whatever the properties say. */
    private static final Map<String, Long> TIMEOUT_CAPS = Map.of(
            "request.timeout.ms", 10_000L,
            "default.api.timeout.ms", STEP_TIMEOUT_MS,
            "max.block.ms", STEP_TIMEOUT_MS,
            "delivery.timeout.ms", STEP_TIMEOUT_MS,
            "socket.connection.setup.timeout.ms", 5_000L,
            "socket.connection.setup.timeout.max.ms", 10_000L,
            "reconnect.backoff.max.ms", 1_000L,
            "retry.backoff.max.ms", 1_000L,
            "linger.ms", 0L);

    private KafkaCheck() {}

    public static void main(String[] args) {
        if (args.length < 3 || !args[0].equals("roundtrip")) {
            usage("expected: roundtrip CLIENT_PROPERTIES TOPIC [--set key=value]...");
        }
        Path propsFile = Path.of(args[1]);
        String topic = args[2];
        List<String[]> overrides = new ArrayList<>();
        for (int i = 3; i < args.length; i++) {
            String kv;
            if (args[i].equals("--set") && i + 1 < args.length) {
                kv = args[++i];
            } else if (args[i].startsWith("--set=")) {
                kv = args[i].substring("--set=".length());
            } else {
                usage("unexpected argument " + args[i]);
                return;
            }
            int eq = kv.indexOf('=');
            if (eq <= 0) {
                usage("--set needs key=value, got " + kv);
            }
            overrides.add(new String[] {kv.substring(0, eq), kv.substring(eq + 1)});
        }

        // An error that kills a client thread (e.g. OutOfMemoryError) is the result, not a hang.
        Thread.setDefaultUncaughtExceptionHandler((thread, e) -> finish(1, "FAIL " + describe(e)));
        Thread watchdog = new Thread(() -> {
            try {
                Thread.sleep(OVERALL_TIMEOUT_MS);
            } catch (InterruptedException e) {
                return;
            }
            finish(1, "FAIL TimeoutException: no result after " + OVERALL_TIMEOUT_MS / 1000 + " s");
        }, "kafkacheck-watchdog");
        watchdog.setDaemon(true);
        watchdog.start();

        try {
            Properties props = new Properties();
            // Kafka's tools read properties files as a byte stream (ISO-8859-1, \-escapes decoded).
            try (InputStream in = Files.newInputStream(propsFile)) {
                props.load(in);
            }
            for (String[] kv : overrides) {
                props.setProperty(kv[0], kv[1]);
            }
            capTimeouts(props);
            String result = roundtrip(props, topic);
            finish(0, "OK " + result);
        } catch (Throwable t) {
            Throwable cause = reportable(t);
            int code = cause instanceof SslAuthenticationException ? 3
                    : cause instanceof AuthenticationException ? 2
                    : 1;
            finish(code, "FAIL " + describe(cause));
        }
    }

    private static String roundtrip(Properties base, String topic) throws Exception {
        ensureTopic(base, topic);

        String value = "kafkacheck-" + UUID.randomUUID();
        Properties producerProps = copy(base);
        producerProps.put("key.serializer", StringSerializer.class.getName());
        producerProps.put("value.serializer", StringSerializer.class.getName());
        producerProps.putIfAbsent("acks", "all");
        RecordMetadata sent;
        KafkaProducer<String, String> producer = new KafkaProducer<>(producerProps);
        try {
            sent = producer.send(new ProducerRecord<>(topic, "kafkacheck", value))
                    .get(STEP_TIMEOUT_MS, TimeUnit.MILLISECONDS);
        } finally {
            producer.close(Duration.ofSeconds(2));
        }

        Properties consumerProps = copy(base);
        consumerProps.put("key.deserializer", StringDeserializer.class.getName());
        consumerProps.put("value.deserializer", StringDeserializer.class.getName());
        // Offsets are never committed: the record is read back by its exact offset.
        consumerProps.put("enable.auto.commit", "false");
        TopicPartition partition = new TopicPartition(topic, sent.partition());
        KafkaConsumer<String, String> consumer = new KafkaConsumer<>(consumerProps);
        try {
            consumer.assign(Collections.singletonList(partition));
            consumer.seek(partition, sent.offset());
            long deadline = System.currentTimeMillis() + STEP_TIMEOUT_MS;
            while (System.currentTimeMillis() < deadline) {
                for (ConsumerRecord<String, String> rec : consumer.poll(Duration.ofMillis(500))) {
                    if (rec.offset() == sent.offset()) {
                        if (!value.equals(rec.value())) {
                            throw new IllegalStateException("offset " + rec.offset() + " holds "
                                    + rec.value() + ", not the record just produced");
                        }
                        return "topic=" + topic + " partition=" + sent.partition()
                                + " offset=" + sent.offset();
                    }
                }
            }
        } finally {
            consumer.close(CloseOptions.timeout(Duration.ofSeconds(2)));
        }
        throw new org.apache.kafka.common.errors.TimeoutException(
                "produced offset " + sent.offset() + " of " + partition + " but could not read it back");
    }

    /** Creates the topic with the broker's defaults; an existing topic is fine. */
    private static void ensureTopic(Properties base, String topic) throws Exception {
        try (Admin admin = Admin.create(copy(base))) {
            try {
                admin.createTopics(List.of(new NewTopic(topic, Optional.empty(), Optional.empty())))
                        .all()
                        .get(STEP_TIMEOUT_MS, TimeUnit.MILLISECONDS);
            } catch (ExecutionException e) {
                Throwable c = e.getCause();
                // Without create rights the topic may still exist (or be auto-created on produce).
                if (!(c instanceof TopicExistsException
                        || c instanceof TopicAuthorizationException
                        || c instanceof ClusterAuthorizationException)) {
                    throw e;
                }
            } finally {
                admin.close(Duration.ofSeconds(2));
            }
        }
    }

    private static void capTimeouts(Properties props) {
        for (Map.Entry<String, Long> cap : TIMEOUT_CAPS.entrySet()) {
            String current = props.getProperty(cap.getKey());
            long value;
            try {
                value = current == null ? Long.MAX_VALUE : Long.parseLong(current.trim());
            } catch (NumberFormatException e) {
                value = Long.MAX_VALUE;
            }
            if (value > cap.getValue()) {
                props.setProperty(cap.getKey(), Long.toString(cap.getValue()));
            }
        }
        // The clients reject a request timeout above the API timeout or the delivery budget.
        long request = Long.parseLong(props.getProperty("request.timeout.ms").trim());
        long api = Long.parseLong(props.getProperty("default.api.timeout.ms").trim());
        long delivery = Long.parseLong(props.getProperty("delivery.timeout.ms").trim());
        long linger = Long.parseLong(props.getProperty("linger.ms").trim());
        long fitting = Math.min(request, Math.min(api, delivery - linger));
        if (fitting < request) {
            props.setProperty("request.timeout.ms", Long.toString(Math.max(fitting, 1)));
        }
    }

    /**
     * The exception worth naming: an authentication failure anywhere in the cause chain wins
     * (SaslAuthenticationException, then SslAuthenticationException, then any other
     * AuthenticationException); otherwise the first cause below generic wrappers.
     */
    static Throwable reportable(Throwable t) {
        Set<Throwable> seen = Collections.newSetFromMap(new IdentityHashMap<>());
        Throwable ssl = null;
        Throwable otherAuth = null;
        for (Throwable c = t; c != null && seen.add(c); c = c.getCause()) {
            if (c instanceof SaslAuthenticationException) {
                return c;
            }
            if (c instanceof SslAuthenticationException) {
                ssl = ssl == null ? c : ssl;
            } else if (c instanceof AuthenticationException) {
                otherAuth = otherAuth == null ? c : otherAuth;
            }
        }
        if (ssl != null) {
            return ssl;
        }
        if (otherAuth != null) {
            return otherAuth;
        }
        Throwable c = t;
        while (c.getCause() != null && c.getCause() != c
                && (c instanceof ExecutionException
                        || c instanceof CompletionException
                        || c instanceof java.lang.reflect.InvocationTargetException
                        || c.getClass() == KafkaException.class)) {
            c = c.getCause();
        }
        return c;
    }

    /** {@code Class: message}, plus the innermost cause when there is one (e.g. the TLS alert). */
    static String describe(Throwable t) {
        String text = t.getClass().getSimpleName() + ": " + oneLine(t.getMessage());
        Set<Throwable> seen = Collections.newSetFromMap(new IdentityHashMap<>());
        Throwable root = t;
        while (root.getCause() != null && seen.add(root)) {
            root = root.getCause();
        }
        if (root != t) {
            text += " (caused by " + root.getClass().getSimpleName() + ": " + oneLine(root.getMessage()) + ")";
        }
        return text;
    }

    private static String oneLine(String s) {
        return s == null ? "" : s.replaceAll("\\s*[\\r\\n]+\\s*", " ").trim();
    }

    private static Properties copy(Properties p) {
        Properties out = new Properties();
        out.putAll(p);
        return out;
    }

    private static void usage(String why) {
        finish(64, "FAIL IllegalArgumentException: " + why);
    }

    private static synchronized void finish(int code, String line) {
        System.out.println(line);
        System.out.flush();
        // Client threads may linger; the result is already out.
        Runtime.getRuntime().halt(code);
    }
}
