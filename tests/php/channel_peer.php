<?php
// A Channel peer in plain PHP, framing and encoding exactly as Workerman's Channel client does
// outside a Workerman process: pack('N', 4 + strlen($body)) . serialize($array).
//   php channel_peer.php HOST:PORT sub NAME...          prints "event <channel> <json>" per event
//   php channel_peer.php HOST:PORT pub NAME JSON        publishes json_decode(JSON, true)
//   php channel_peer.php HOST:PORT pubobj NAME          publishes a stdClass object {x: 1}
//   php channel_peer.php HOST:PORT subobj NAME          prints "object <class> <x>" for each event
// A subscriber says "subscribed" once the server has the subscription: it sends werkmann's
// `hello` after it (a PHP server ignores it; a werkmann server answers it in order).
[$self, $addr, $mode] = array_slice($argv, 0, 3);
$args = array_slice($argv, 3);
$sock = stream_socket_client("tcp://$addr", $errno, $errstr, 5);
if (!$sock) {
    fwrite(STDERR, "connect: $errstr\n");
    exit(1);
}
function send_cmd($sock, array $cmd) {
    $body = serialize($cmd);
    fwrite($sock, pack('N', 4 + strlen($body)) . $body);
}
function read_frame($sock) {
    $head = fread($sock, 4);
    if ($head === false || strlen($head) < 4) {
        return null;
    }
    $len = unpack('N', $head)[1] - 4;
    $body = '';
    while (strlen($body) < $len) {
        $chunk = fread($sock, $len - strlen($body));
        if ($chunk === false || $chunk === '') {
            return null;
        }
        $body .= $chunk;
    }
    return $body;
}
switch ($mode) {
    case 'sub':
    case 'subobj':
        $names = array_map(fn($n) => ctype_digit($n) ? (int)$n : $n, $args);
        send_cmd($sock, ['type' => 'subscribe', 'channels' => $names]);
        send_cmd($sock, ['type' => 'hello']);
        while (($frame = read_frame($sock)) !== null) {
            $msg = unserialize($frame);
            if ($msg['type'] === 'hello') {
                echo "subscribed\n";
                continue;
            }
            if ($mode === 'subobj') {
                $d = $msg['data'];
                echo "object " . get_class($d) . " " . $d->x . "\n";
            } else {
                echo "event " . $msg['channel'] . " " . json_encode($msg['data'], JSON_UNESCAPED_UNICODE) . "\n";
            }
        }
        break;
    case 'pub':
        send_cmd($sock, ['type' => 'publish', 'channels' => [$args[0]], 'data' => json_decode($args[1], true)]);
        break;
    case 'pubobj':
        $o = new stdClass();
        $o->x = 1;
        send_cmd($sock, ['type' => 'publish', 'channels' => [$args[0]], 'data' => $o]);
        break;
}
fclose($sock);
