/* werkmann.js: the resuming client of werkmann's WebSocket nodes (docs/recovery.md).
 *
 *   const w = new Werkmann(['ws://127.0.0.1:4236'], { channels: ['Broadcast'] });
 *   w.on('message', (data, channel) => …);        // each event once, in order, across reconnects
 *   w.on('recovery', ({recovered, lost}) => …);    // after a reconnect: was anything lost?
 *   w.on('direct', text => …);                     // pushes to this connection (client id, uid, group)
 *   w.on('welcome', clientId => …);                // this connection's client id, W-C
 *   w.on('status', (state, detail) => …);          // open, ready, closed (detail: ms until the retry)
 *   new Werkmann(nodes, { token })                 // a JWT your backend signed: bound to its uid and groups
 *
 * It connects to NODE/werkmann?channel=…, keeps the id of the last event and, when the
 * connection drops, reconnects with back-off (to the next node of the list) sending it back as
 * last_event_id: the node answers with what was missed, then live events.
 */
(function (global) {
  'use strict';
  const decoder = new TextDecoder();

  class Werkmann {
    constructor(nodes, options) {
      const o = options || {};
      this.nodes = (Array.isArray(nodes) ? nodes : [nodes]).map(n => n.replace(/\/+$/, ''));
      this.channels = o.channels || ['Broadcast'];
      this.lastEventId = o.lastEventId || null;
      this.token = o.token || null;
      this.minDelay = o.minDelay || 250;
      this.maxDelay = o.maxDelay || 10000;
      this.delay = this.minDelay;
      this.current = o.start !== undefined ? o.start : Math.floor(Math.random() * this.nodes.length);
      this.handlers = { message: [], recovery: [], direct: [], welcome: [], status: [] };
      this.clientId = null;
      this.closed = false;
      this.ws = null;
      this.timer = null;
      this.connect();
    }

    on(event, f) {
      if (!this.handlers[event]) throw new Error('werkmann.js: no event ' + event);
      this.handlers[event].push(f);
      return this;
    }

    emit(event, ...args) {
      for (const f of this.handlers[event]) {
        try { f(...args); } catch (e) { console.error(e); }
      }
    }

    url() {
      let u = this.nodes[this.current] + '/werkmann?channel=' +
        this.channels.map(encodeURIComponent).join(',');
      if (this.lastEventId) u += '&last_event_id=' + encodeURIComponent(this.lastEventId);
      if (this.token) u += '&token=' + encodeURIComponent(this.token);
      return u;
    }

    connect() {
      const ws = new WebSocket(this.url());
      ws.binaryType = 'arraybuffer';
      this.ws = ws;
      ws.onopen = () => {
        this.delay = this.minDelay;
        this.emit('status', 'open', this.nodes[this.current]);
      };
      ws.onmessage = e => {
        if (typeof e.data === 'string') { this.emit('direct', e.data); return; }
        let m;
        try { m = JSON.parse(decoder.decode(e.data)); } catch (err) { return; }
        switch (m.type) {
          case 'welcome':
            this.clientId = m.client_id;
            this.emit('welcome', m.client_id);
            break;
          case 'ready':
            this.lastEventId = m.id;
            this.emit('status', 'ready', m.id);
            break;
          case 'recovery':
            this.lastEventId = m.id;
            this.emit('recovery', { recovered: m.recovered, lost: m.lost });
            break;
          case 'message':
            this.lastEventId = m.id;
            this.emit('message', m.data, m.channel, m.id);
            // Its publisher asked for a delivery report with acknowledgements.
            if (m.ack && ws.readyState === WebSocket.OPEN) {
              ws.send(JSON.stringify({ type: 'ack', ack: m.ack }));
            }
            break;
        }
      };
      ws.onclose = () => {
        if (this.ws === ws) this.ws = null;
        if (this.closed) return;
        this.current = (this.current + 1) % this.nodes.length;
        const wait = Math.round(this.delay * (0.5 + Math.random() / 2));
        this.delay = Math.min(this.delay * 2, this.maxDelay);
        this.emit('status', 'closed', wait);
        this.timer = setTimeout(() => this.connect(), wait);
      };
    }

    /** Stop for good. */
    close() {
      this.closed = true;
      clearTimeout(this.timer);
      if (this.ws) this.ws.close();
    }
  }

  global.Werkmann = Werkmann;
})(typeof window !== 'undefined' ? window : globalThis);
