// Type-checked with `tsc --strict` in CI (ci/node.sh): the public API as a TypeScript user sees it.
import { attach, codes, Channel, Flow, FlowError, Machnet, Message, MachnetError, ErrorCode, Loan, ZcMessage } from 'machnet'

async function echoServer(ch: Channel): Promise<number> {
  let n = 0
  for await (const msg of ch) {
    const m: Message = msg
    await ch.send(m.flow, m.data)
    n++
  }
  return n
}

async function client(): Promise<void> {
  const machnet: Machnet = await attach('/run/machnet/machnet.sock')
  const ip: string = machnet.localIp
  const ch: Channel = await machnet.openChannel(0)
  await ch.listen(900)
  const flow: Flow = await ch.connect('10.0.0.2', 888, 5000)
  const port: number = flow.remotePort
  flow.on('end', () => console.log('peer closed'))
  flow.on('error', (err: FlowError) => console.log(err.code === 'ECONNRESET', err.flow.equals(flow)))
  flow.once('close', (hadError: boolean, err?: FlowError) => console.log(hadError, err?.message))
  await ch.send(flow, Buffer.from('hello'))
  await ch.send(flow, new Uint8Array([1, 2, 3]))
  const queued: boolean = ch.trySend(flow, Buffer.alloc(8))
  const { flow: from, data } = await ch.recv()
  const late: Message = await ch.recv(250) // rejects with codes.TIMEOUT if nothing arrives
  const same: boolean = from.equals(flow)
  const bytes: Buffer = data
  const maybe: Message | null = ch.tryRecv()
  if (maybe !== null) console.log(maybe.data.length)
  try {
    await ch.send(flow, Buffer.alloc(0))
  } catch (e) {
    const err = e as MachnetError
    const code: ErrorCode = err.code
    if (code === codes.INVALID_ARGUMENT) console.log('empty')
  }
  // Zero-copy: a loan written in place and committed; a received message lent in place.
  const loan: Loan = await ch.loan(flow, 4096)
  const n: number = loan.data.write('hello')
  loan.commit(n)
  const loaned: Loan | null = ch.tryLoan(flow, 8)
  if (loaned !== null && !loaned.done) loaned.cancel()
  const zc: ZcMessage = await ch.recvZc()
  const view: Buffer = zc.data
  const zcFlow: Flow = zc.flow
  zc.release()
  const zc2: ZcMessage | null = ch.tryRecvZc()
  if (zc2 !== null && !zc2.released) zc2.release()
  console.log(view.length, zcFlow.equals(flow), loan.length)
  await ch.closeFlow(flow)
  await ch.abortFlow(flow)
  await ch.close()
  await ch[Symbol.asyncDispose]()
  await ch.abort()
  await machnet.close()
  await machnet[Symbol.asyncDispose]()
  if (!machnet.closed) throw new Error('not closed')
  console.log(ip, port, queued, same, bytes.length, await echoServer(ch), ch.closed, machnet.isSidecarGone())
}

// @ts-expect-error: a flow has no 'data' event (messages come from the channel)
void ((f: Flow) => f.on('data', (d: Buffer) => d))

// @ts-expect-error: a string is not a message
void (async (ch: Channel, f: Flow) => ch.send(f, 'text'))

void client
