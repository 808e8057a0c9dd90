// A Kafka Connect standalone worker without the REST server: the test harness that runs
// real Debezium connectors against the test broker (see tests/debezium/README.md).
//
//   java -cp "<jars>/*:<classes>" BookrecConnect worker.properties connector.properties...
//
// It does what org.apache.kafka.connect.cli.ConnectStandalone does (plugins, worker config,
// file offset store, worker, standalone herder, one connector per .properties file) but
// starts no REST server: the stock CLI cannot start with the Jetty jars that ship with the
// Debezium wheel. It prints "bookrec-connect: running <name>" once per connector and
// "bookrec-connect: ready" when every connector was accepted, then runs until it is killed
// (SIGTERM stops the herder, which flushes the offsets).

import java.util.Map;
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
        if (args.length < 2) {
            System.err.println("usage: BookrecConnect worker.properties connector.properties...");
            System.exit(2);
        }
        Map<String, String> workerProps = Utils.propsToStringMap(Utils.loadProps(args[0]));
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
        System.out.println("bookrec-connect: ready");
        System.out.flush();
        stopped.await();
    }
}
