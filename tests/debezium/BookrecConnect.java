// A Kafka Connect standalone worker: the test harness that runs real Debezium connectors
// against the test broker (see tests/debezium/README.md).
//
//   java -cp "<jars>/*:<classes>" BookrecConnect worker.properties connector.properties...
//
// It does what org.apache.kafka.connect.cli.ConnectStandalone does (plugins, worker config,
// file offset store, worker, standalone herder, one connector per .properties file), but the
// stock CLI cannot start its Jetty REST server with the Jetty jars that ship with the
// Debezium wheel. When the worker properties set `bookrec.rest.port`, it serves instead the
// part of Connect's REST API that deploy/connect/register.sh and an operator's health check
// use, on 127.0.0.1 with the JDK's own HTTP server, each request handed to the same herder
// the stock REST resources call:
//
//   GET /connectors                      ["name", ...]
//   PUT /connectors/{name}/config        create (201) or replace (200); body: the config map
//   GET /connectors/{name}/status        the connector's and its tasks' states
//
// It prints "bookrec-connect: running <name>" once per connector file and
// "bookrec-connect: ready" when every one was accepted (and the REST port is open), then runs
// until it is killed (SIGTERM stops the herder, which flushes the offsets).

import com.fasterxml.jackson.databind.ObjectMapper;
import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.common.utils.Time;
import org.apache.kafka.common.utils.Utils;
import org.apache.kafka.connect.connector.policy.ConnectorClientConfigOverridePolicy;
import org.apache.kafka.connect.runtime.Herder;
import org.apache.kafka.connect.runtime.Worker;
import org.apache.kafka.connect.runtime.WorkerConfig;
import org.apache.kafka.connect.runtime.isolation.Plugins;
import org.apache.kafka.connect.runtime.rest.entities.ConnectorInfo;
import org.apache.kafka.connect.runtime.standalone.StandaloneConfig;
import org.apache.kafka.connect.runtime.standalone.StandaloneHerder;
import org.apache.kafka.connect.storage.FileOffsetBackingStore;
import org.apache.kafka.connect.util.FutureCallback;

public final class BookrecConnect {
    public static void main(String[] args) throws Exception {
        if (args.length < 1) {
            System.err.println("usage: BookrecConnect worker.properties [connector.properties...]");
            System.exit(2);
        }
        Map<String, String> workerProps = Utils.propsToStringMap(Utils.loadProps(args[0]));
        String restPort = workerProps.remove("bookrec.rest.port");
        Plugins plugins = new Plugins(workerProps);
        plugins.compareAndSwapWithDelegatingLoader();
        StandaloneConfig config = new StandaloneConfig(workerProps);
        ConnectorClientConfigOverridePolicy policy = plugins.newPlugin(
                config.getString(WorkerConfig.CONNECTOR_CLIENT_POLICY_CLASS_CONFIG),
                config, ConnectorClientConfigOverridePolicy.class);
        FileOffsetBackingStore offsets = new FileOffsetBackingStore(plugins.newInternalConverter(
                true, "org.apache.kafka.connect.json.JsonConverter",
                Map.of("schemas.enable", "false")));
        offsets.configure(config);
        Worker worker = new Worker("bookrec-connect", Time.SYSTEM, plugins, config, offsets, policy);
        StandaloneHerder herder = new StandaloneHerder(worker, config.kafkaClusterId(), policy);
        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            herder.stop();
            stopped.countDown();
        }));
        herder.start();
        for (int i = 1; i < args.length; i++) {
            Map<String, String> props = Utils.propsToStringMap(Utils.loadProps(args[i]));
            String name = props.get("name");
            if (name == null) {
                System.err.println("bookrec-connect: " + args[i] + " has no name");
                System.exit(2);
            }
            FutureCallback<Herder.Created<ConnectorInfo>> created = new FutureCallback<>();
            herder.putConnectorConfig(name, props, true, created);
            created.get(120, TimeUnit.SECONDS);
            System.out.println("bookrec-connect: running " + name);
        }
        if (restPort != null) {
            serveRest(herder, Integer.parseInt(restPort));
        }
        System.out.println("bookrec-connect: ready");
        System.out.flush();
        stopped.await();
    }

    private static final ObjectMapper JSON = new ObjectMapper();

    private static void serveRest(Herder herder, int port) throws IOException {
        HttpServer server = HttpServer.create(new InetSocketAddress("127.0.0.1", port), 16);
        server.createContext("/connectors", exchange -> {
            try {
                route(herder, exchange);
            } catch (Exception e) {
                Throwable cause = e instanceof ExecutionException && e.getCause() != null
                        ? e.getCause() : e;
                int code = cause instanceof org.apache.kafka.connect.errors.NotFoundException
                        ? 404 : 500;
                reply(exchange, code, error(code, String.valueOf(cause.getMessage())));
            } finally {
                exchange.close();
            }
        });
        server.start();
        System.out.println("bookrec-connect: REST on 127.0.0.1:" + port);
    }

    private static Map<String, Object> error(int code, String message) {
        Map<String, Object> e = new LinkedHashMap<>();
        e.put("error_code", code);
        e.put("message", message);
        return e;
    }

    private static void route(Herder herder, HttpExchange exchange) throws Exception {
        String method = exchange.getRequestMethod();
        String[] parts = exchange.getRequestURI().getPath().replaceAll("/+$", "").split("/");
        // parts: "", "connectors", name?, "config" | "status"?
        if (parts.length == 2 && method.equals("GET")) {
            FutureCallback<java.util.Collection<String>> names = new FutureCallback<>();
            herder.connectors(names);
            reply(exchange, 200, names.get(30, TimeUnit.SECONDS));
        } else if (parts.length == 4 && parts[3].equals("config") && method.equals("PUT")) {
            String name = parts[2];
            Map<String, Object> body;
            try {
                body = JSON.readValue(exchange.getRequestBody(), Map.class);
            } catch (IOException e) {
                reply(exchange, 400, error(400, "the body is not a JSON object: " + e.getMessage()));
                return;
            }
            Map<String, String> config = new LinkedHashMap<>();
            for (Map.Entry<String, Object> e : body.entrySet()) {
                config.put(e.getKey(), e.getValue() == null ? null : String.valueOf(e.getValue()));
            }
            config.put("name", name);
            FutureCallback<Herder.Created<ConnectorInfo>> created = new FutureCallback<>();
            herder.putConnectorConfig(name, config, true, created);
            Herder.Created<ConnectorInfo> result = created.get(120, TimeUnit.SECONDS);
            Map<String, Object> info = new LinkedHashMap<>();
            info.put("name", result.result().name());
            info.put("config", result.result().config());
            System.out.println("bookrec-connect: " + (result.created() ? "created " : "updated ")
                    + name);
            reply(exchange, result.created() ? 201 : 200, info);
        } else if (parts.length == 4 && parts[3].equals("status") && method.equals("GET")) {
            reply(exchange, 200, herder.connectorStatus(parts[2]));
        } else {
            reply(exchange, 404, error(404, method + " " + exchange.getRequestURI().getPath()
                    + " is not served by this worker"));
        }
    }

    private static void reply(HttpExchange exchange, int code, Object body) throws IOException {
        byte[] bytes = JSON.writeValueAsString(body).getBytes(StandardCharsets.UTF_8);
        exchange.getResponseHeaders().set("Content-Type", "application/json");
        exchange.sendResponseHeaders(code, bytes.length);
        exchange.getResponseBody().write(bytes);
    }
}
